"""Spectral diagnostics of a trained experiment: pair each adapted weight with its update.

For adapter methods the fine-tuned weight of a layer is what the layer computes
(``adapter.merged_weight(base)``), and the pretrained weight is the same
expression under ``method.reference()``: this holds for methods that rewrite
the base (PiSSA's residual) and for non-additive ones (DoRA). For full
fine-tuning the architecture's default target Linears are compared with their
initial values, so LoRA and full fine-tuning are measured on the same matrices.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from peftlab.analysis.spectral import analyze_layers
from peftlab.methods.base import adapted_layers, select_modules


@torch.no_grad()
def weight_pairs(model: Any, method: Any, target_defaults: Any) -> dict[str, tuple[Tensor, Tensor]]:
    """``{layer: (W0, W_ft - W0)}`` in float32, shape out x in."""
    layers = adapted_layers(model)
    if layers:
        tuned = {n: layer.adapter.merged_weight(layer.base.weight.float()).clone() for n, layer in layers.items()}
        with method.reference(model):
            pretrained = {n: layer.adapter.merged_weight(layer.base.weight.float()).clone() for n, layer in layers.items()}
        return {n: (pretrained[n], tuned[n] - pretrained[n]) for n in layers}
    pairs = {}
    for name in select_modules(model, None, target_defaults):
        weight = model.get_submodule(name).weight.detach().float()
        initial = method.initial.get(f"{name}.weight", weight).float()
        pairs[name] = (initial, weight - initial)
    return pairs


def analyze_experiment(exp: Any, top_k: int = 10, epsilon: float = 0.5) -> dict[str, Any]:
    """Intruder dimensions, RankMe, norms and subspace overlap of every adapted layer."""
    pairs = weight_pairs(exp.model, exp.method, exp.loaded.target_defaults)
    result = analyze_layers(pairs, top_k=top_k, epsilon=epsilon)
    for name, rank in exp.method.final_ranks(exp.model).items():  # ranks the method chose per layer (EVA), next to RankMe
        if name in result["layers"]:
            result["layers"][name]["rank"] = rank
    return result
