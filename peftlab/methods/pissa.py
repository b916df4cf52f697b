"""PiSSA: the adapter starts as the principal singular part of W.

Meng, Wang & Zhang 2024, "PiSSA: Principal Singular Values and Singular Vectors
Adaptation of Large Language Models".

    W = U diag(sigma) V^T                  (thin SVD in fp32, sigma descending)
    B = U_r diag(sqrt(sigma_r / s)),   A = diag(sqrt(sigma_r / s)) V_r^T
    W_res = W - s B A                  (= the bottom k - r part of W)
    y = W_res x + s B A dropout(x);    merge: W_res + s B A;   #P = r (m + n)

The singular values are divided by the scale s = alpha/r (alpha/sqrt(r) with
rslora) before the square root, as PEFT's ``pissa_init`` does, so that
``s B A = U_r diag(sigma_r) V_r^T`` exactly for any alpha. The default alpha is
the rank (s = 1), as in the PiSSA training scripts.

``svd_niter=None`` computes the exact top-r triplets (``top_singular.top_triplets``:
the eigendecomposition of the Gram matrix where it resolves them as well as the
fp32 SVD does, about 3x faster; PEFT's ``init_lora_weights="pissa"`` runs the full
``torch.linalg.svd``). ``svd_niter=K`` is ``torch.svd_lowrank(W, q=r, niter=K)``,
PEFT's ``init_lora_weights="pissa_niter_K"`` (the README recommends K=4, the
scripts use K=16), computed row-major. Like PEFT, it draws its random test matrix
from torch's global generator, so it is reproducible under the run seed. With
q = r it is far from the exact triplets on slowly decaying spectra (on MiniLM at
r = 8 and K = 4 the rank-r part is 86% from the exact one): a different start,
not a cheaper route to the same one.

The residual is computed in fp32 and stored in the layer's dtype; A and B stay
fp32 on a half-precision model (the framework keeps adapter parameters fp32, as
PEFT's ``autocast_adapter_dtype`` does), so base + adapter reproduces W up to the
rounding of the residual to the layer's dtype.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from peftlab.errors import UserError
from peftlab.methods.base import Adapter, check_rank
from peftlab.methods.lora import LoRA, LoRAAdapter
from peftlab.methods.top_singular import randomized_triplets, top_triplets


class PiSSAAdapter(LoRAAdapter):
    """LoRA factors initialised from the top-r singular triplets of W."""

    rewrites_base = True

    def __init__(self, in_features: int, out_features: int, rank: int, scale: float,
                 dropout: float = 0.0, svd_niter: int | None = None):
        super().__init__(in_features, out_features, rank, scale, dropout)
        self.svd_niter = svd_niter

    def triplets(self, weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(U_r (m x r), sigma_r (r), V_r^T (r x n))`` of the fp32 weight."""
        if self.svd_niter is None:
            return top_triplets(weight, self.rank)
        return randomized_triplets(weight, self.rank, self.svd_niter)

    @torch.no_grad()
    def initialize(self, weight: Tensor, calibration: Tensor | None = None) -> Tensor | None:
        w = weight.to(torch.float32)
        Ur, Sr, Vhr = self.triplets(w)
        Sr = Sr / self.scale
        # The expressions of PEFT's pissa_init, so equal triplets give equal factors.
        lora_A = torch.diag(torch.sqrt(Sr)) @ Vhr
        lora_B = Ur @ torch.diag(torch.sqrt(Sr))
        self.lora_A.data = lora_A.contiguous()
        self.lora_B.data = lora_B.contiguous()
        residual = w - self.scale * lora_B @ lora_A
        return residual.to(weight.dtype)


def svd_iterations(value: Any, option: str = "method.svd_niter") -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UserError(f"{option}={value} is not allowed: use null (exact SVD) or an integer >= 0 (e.g. 4)")
    return value


def no_init_option(rest: dict[str, Any]) -> None:
    """LoRA's ``init`` option (kaiming | gaussian) means nothing for an SVD-initialised adapter."""
    if "init" in rest:
        raise UserError("method.init is not an option of this method: its factors come from the weight itself")


class PiSSA(LoRA):
    """PiSSA: LoRA on the residual W - U_r diag(sigma_r) V_r^T, initialised at the principal part."""

    adapter_class = PiSSAAdapter

    def __init__(self, rank: int = 8, alpha: float | None = None, dropout: float = 0.0, rslora: bool = False,
                 svd_niter: int | None = None, target_modules: Any = None, **rest: Any):
        no_init_option(rest)
        super().__init__(rank=rank, alpha=rank if alpha is None else alpha, dropout=dropout, rslora=rslora,
                         target_modules=target_modules, **rest)
        self.svd_niter = svd_iterations(svd_niter)

    def make_adapter(self, layer: nn.Linear, name: str) -> Adapter:
        check_rank(self.rank, layer, name)
        return self.adapter_class(layer.in_features, layer.out_features, self.rank, self.scale,
                                  self.dropout, self.svd_niter)
