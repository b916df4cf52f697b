"""EVA: LoRA whose A starts at the principal directions of each layer's inputs, with ranks redistributed.

Paischer et al. 2024, "One Initialization to Rule them All: Fine-tuning via
Explained Variance Adaptation".

    incremental PCA of the inputs X of every target layer (the shared calibration
    pass, :mod:`peftlab.calibration.explained_variance`): round(rho r) components
    each, until consecutive estimates have cosine similarity >= tau
    ranks: the top r * L explained-variance ratios pooled over the L layers;
    r_l = how many of them layer l has (0: the layer gets no adapter)
    A = top-r_l components (r_l x n), divided by sqrt(singular values) with whiten=true
    B = 0;   y = W x + s B A dropout(x);   merge: W + s B A;   #P = sum_l r_l (m_l + n_l)

The scale is ``s = alpha / r`` with the nominal r for every layer: PEFT's
``adjust_scaling_factors=True`` (``alpha_l = alpha r_l / r``). The official code
uses alpha = 1, i.e. ``s = 1 / r_l``. With ``rslora=true`` the scale is
``alpha / sqrt(r)`` for every layer (PEFT's alpha_l would give ``alpha sqrt(r_l) / r``):
the scale stays the one the nominal rank chose. ``rho = 1`` keeps every layer at r.
Positions whose label is -100 (a causal LM's prompt tokens) are left out of
the PCA (``label_mask``, PEFT's default; the EVA repository uses all tokens);
classification batches have no per-token labels, so nothing is masked there.
W is untouched. The final r_l of every layer is recorded in the run folder.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from peftlab.calibration.explained_variance import ExplainedVariance
from peftlab.calibration.request import CalibrationData, Request
from peftlab.errors import UserError
from peftlab.methods.base import Adapter, positive_int, select_modules
from peftlab.methods.lora import LoRA, LoRAAdapter
from peftlab.methods.pissa import no_init_option


class EVAAdapter(LoRAAdapter):
    """LoRA with A = the top principal directions of the layer's inputs, B = 0."""

    def __init__(self, in_features: int, out_features: int, rank: int, scale: float, dropout: float = 0.0,
                 whiten: bool = False):
        super().__init__(in_features, out_features, rank, scale, dropout)
        self.whiten = whiten

    @torch.no_grad()
    def initialize(self, weight: Tensor, calibration: Any = None) -> Tensor | None:
        if not calibration or "components" not in calibration:
            raise ValueError("EVA needs the principal components of its layer's inputs (Method.calibration_request)")
        components = calibration["components"].to(weight.device, torch.float32)[: self.rank]
        if self.whiten:
            components = components / calibration["singular_values"][: self.rank].to(components).sqrt().view(-1, 1)
        self.lora_A.data = components.contiguous()
        nn.init.zeros_(self.lora_B)
        return None


class EVA(LoRA):
    """EVA; ``rho`` > 1 lets the data move rank between layers (the total stays r per layer)."""

    adapter_class = EVAAdapter

    def __init__(self, rank: int = 8, alpha: float = 16, dropout: float = 0.0, rslora: bool = False,
                 rho: float = 2.0, tau: float = 0.99, whiten: bool = False, label_mask: bool = True,
                 max_batches: int = 1000, calibration: Any = None, target_modules: Any = None, **rest: Any):
        no_init_option(rest)
        super().__init__(rank=rank, alpha=alpha, dropout=dropout, rslora=rslora, target_modules=target_modules,
                         **rest)
        if isinstance(rho, bool) or not isinstance(rho, (int, float)) or rho < 1:
            raise UserError(f"method.rho={rho} is not allowed: use a number >= 1 (1: no rank redistribution)")
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0 < tau <= 1:
            raise UserError(f"method.tau={tau} is not allowed: use a cosine similarity in (0, 1], e.g. 0.99")
        self.rho, self.tau, self.whiten, self.label_mask = float(rho), float(tau), bool(whiten), bool(label_mask)
        self.max_batches = positive_int(max_batches, "method.max_batches")
        self.calibration = CalibrationData.from_option(calibration)
        self.layer_ranks: dict[str, int] = {}

    def calibration_request(self, model: nn.Module, *, target_defaults: Any) -> Request:
        names = select_modules(model, self.target_modules, target_defaults)
        for name in names:
            width = model.get_submodule(name).in_features
            if round(self.rho * self.rank) > width:
                raise UserError(f"method.rank={self.rank} times method.rho={self.rho} is more components than "
                                f"layer '{name}' has inputs ({width}): lower the rank or rho")
        stat = ExplainedVariance(dict.fromkeys(names, self.rank), self.rho, self.tau, self.label_mask,
                                 self.max_batches)
        return Request(stat, names, self.calibration)

    def adapt(self, model: nn.Module, *, target_defaults: Any, calibration: Any = None) -> None:
        info = getattr(calibration, "info", None) or {}
        if "ranks" not in info:
            raise ValueError("EVA adapts from calibration statistics: build it with its calibration_request")
        self.layer_ranks = {name: int(r) for name, r in info["ranks"].items()}
        super().adapt(model, target_defaults=target_defaults, calibration=calibration)

    def final_ranks(self, model: nn.Module) -> dict[str, int]:
        return dict(self.layer_ranks)

    def targets(self, model: nn.Module, target_defaults: Any) -> list[str]:
        return [n for n in super().targets(model, target_defaults) if self.layer_ranks.get(n, 0) > 0]

    def make_adapter(self, layer: nn.Linear, name: str) -> Adapter:
        return self.adapter_class(layer.in_features, layer.out_features, self.layer_ranks[name], self.scale,
                                  self.dropout, self.whiten)
