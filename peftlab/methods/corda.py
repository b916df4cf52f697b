"""CorDA: context-oriented decomposition, the adapter from the SVD of W times the input covariance.

Yang et al. 2024, "CorDA: Context-Oriented Decomposition Adaptation of Large
Language Models for Task-Aware Parameter-Efficient Fine-tuning".

    C = (1/N) sum_i X_i^T X_i   over calibration inputs X_i / |max X_i|  (n x n, the shared pass)
    C <- C + d mean(diag C) I,  d = 0.01, doubled until ||C C^-1 - I||_F < 0.05
    W C = U diag(S) V~^T,   V^T := V~^T C^-1      (so W = U diag(S) V^T)
    IPA (instruction-previewed): the first r triplets, C from the task to learn
    KPA (knowledge-preserved):   the last r triplets, C from the data to keep
    B = U_r diag(sqrt(S_r / s)),  A = diag(sqrt(S_r / s)) V_r^T,  W_res = W - s B A
    y = W_res x + s B A dropout(x);   merge: W_res + s B A;   #P = r (m + n)

As in PEFT (``corda_init``), the singular values are divided by s before the
square root, so ``s B A`` is the chosen part of ``W`` for any alpha, and the
model computes exactly the pretrained function at init. The covariance comes
from the shared calibration pass (``method.calibration``: for KPA name the
dataset to preserve there). The official code and PEFT call the modes ``ipm``
and ``kpm``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from peftlab.calibration.covariance import Covariance
from peftlab.calibration.request import CalibrationData, Request
from peftlab.errors import UserError
from peftlab.methods.base import Adapter, check_rank, select_modules
from peftlab.methods.lora import LoRA, LoRAAdapter
from peftlab.methods.pissa import no_init_option
from peftlab.methods.top_singular import top_triplets

MODES = ("ipa", "kpa")
INVERSE_TOLERANCE = 0.05
MAX_DOUBLINGS = 64


def damped_inverse(covariance: Tensor) -> tuple[Tensor, Tensor]:
    """``(C + d mean(diag C) I, its inverse)`` with the smallest d = 0.01 * 2^j that inverts well."""
    eye = torch.eye(covariance.size(0), device=covariance.device)
    damp = 0.01
    for _ in range(MAX_DOUBLINGS):
        fixed = covariance + torch.diag(torch.ones(covariance.size(0), device=covariance.device)
                                        * torch.mean(torch.diag(covariance)) * damp)
        inverse = torch.linalg.inv(fixed)
        if torch.dist(fixed @ inverse, eye).item() < INVERSE_TOLERANCE:
            return fixed, inverse
        damp *= 2
    raise UserError("CorDA's input covariance cannot be inverted even with damping (are the calibration "
                    "inputs all zero?): use other calibration data (method.calibration.dataset)")


class CorDAAdapter(LoRAAdapter):
    """LoRA factors from the first (IPA) or last (KPA) r triplets of the SVD of W C."""

    rewrites_base = True

    def __init__(self, in_features: int, out_features: int, rank: int, scale: float, dropout: float = 0.0,
                 mode: str = "ipa"):
        super().__init__(in_features, out_features, rank, scale, dropout)
        self.mode = mode

    @torch.no_grad()
    def initialize(self, weight: Tensor, calibration: Any = None) -> Tensor | None:
        if not calibration or "covariance" not in calibration:
            raise ValueError("CorDA needs the input covariance of its layer (Method.calibration_request)")
        w = weight.to(torch.float32)
        fixed, inverse = damped_inverse(calibration["covariance"].to(w.device, torch.float32))
        if self.mode == "ipa":  # the top r triplets of W C
            U, S, Vh = top_triplets(w @ fixed, self.rank)
        else:  # the bottom r: the full SVD (a Gram matrix cannot resolve the smallest)
            U, S, Vh = torch.linalg.svd(w @ fixed, full_matrices=False)
            U, S, Vh = U[:, -self.rank:], S[-self.rank:], Vh[-self.rank:]
        V = (Vh @ inverse).transpose(0, 1)
        S = S / self.scale
        # The expressions of PEFT's corda_init, so both give the same factors.
        self.lora_A.data = V.t().mul(S.sqrt().view(-1, 1)).contiguous()
        self.lora_B.data = U.mul(S.sqrt()).contiguous()
        return (w - self.scale * self.lora_B @ self.lora_A).to(weight.dtype)


class CorDA(LoRA):
    """CorDA, ``mode=ipa`` (learn the task) or ``mode=kpa`` (preserve the calibration data's knowledge)."""

    adapter_class = CorDAAdapter

    def __init__(self, rank: int = 8, alpha: float | None = None, dropout: float = 0.0, rslora: bool = False,
                 mode: str = "ipa", calibration: Any = None, target_modules: Any = None, **rest: Any):
        no_init_option(rest)
        super().__init__(rank=rank, alpha=rank if alpha is None else alpha, dropout=dropout, rslora=rslora,
                         target_modules=target_modules, **rest)
        if mode not in MODES:
            raise UserError(f"method.mode={mode} is not allowed: use ipa (first r triplets) or kpa (last r)")
        self.mode = mode
        self.calibration = CalibrationData.from_option(calibration)

    def calibration_request(self, model: nn.Module, *, target_defaults: Any) -> Request:
        names = select_modules(model, self.target_modules, target_defaults)
        for name in names:
            check_rank(self.rank, model.get_submodule(name), name)
        return Request(Covariance(), names, self.calibration)

    def make_adapter(self, layer: nn.Linear, name: str) -> Adapter:
        check_rank(self.rank, layer, name)
        return self.adapter_class(layer.in_features, layer.out_features, self.rank, self.scale,
                                  self.dropout, self.mode)
