"""An adapted layer in the form a Hugging Face PEFT tuner stores it, and a whole run made of them.

An adapter that PEFT can hold as it is returns a :class:`NativeForm` from
``Adapter.peft_native()``: the PEFT type, its tensors under PEFT's key suffixes,
the config fields it implies, the tensors every layer shares (saved once under
``base_model.<key>``) and PEFT's own formula for the weight it computes from
those tensors. :func:`native_export` turns the forms of every layer into one
adapter: the config fields must agree across layers (a field PEFT can vary per
layer, e.g. LoRA's ``r`` through ``rank_pattern``, takes its most common value
and a pattern for the others) and PEFT's formula on the written tensors must
reproduce ``adapter.merged_weight(W)``. Anything else (no form, a rewritten base
weight, a disagreement, a mismatch) returns None, and the export falls back to a
LoRA of each layer's weight change.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

#: the native path is taken only when PEFT's formula matches merged_weight() this closely (relative, fp32)
NATIVE_TOLERANCE = 1e-5

#: ``formula(W, tensors, fields)``: the weight PEFT computes on the original W from the stored tensors
#: (the layer's and the shared ones, by key suffix) and the layer's config fields, in fp32.
Formula = Callable[[Tensor, Mapping[str, Tensor], Mapping[str, Any]], Tensor]


@dataclass
class NativeForm:
    """One adapted layer as PEFT stores it.

    ``kind`` names the export path (``native-<kind>``); ``config`` holds the fields
    that must be equal on every layer; ``patterned`` maps a field PEFT can vary per
    layer to ``(pattern field, this layer's value)``; ``shared`` holds tensors every
    layer uses, saved once under ``base_model.<key>`` (they may also appear in
    ``tensors`` when PEFT saves a copy per layer).
    """

    peft_type: str
    kind: str
    tensors: dict[str, Tensor]
    config: dict[str, Any]
    formula: Formula
    patterned: dict[str, tuple[str, Any]] = field(default_factory=dict)
    shared: dict[str, Tensor] = field(default_factory=dict)

    def fields(self) -> dict[str, Any]:
        """Every config field of this layer, patterned ones at this layer's value."""
        return {**self.config, **{name: value for name, (_, value) in self.patterned.items()}}

    def peft_weight(self, weight: Tensor) -> Tensor:
        with torch.no_grad():
            return self.formula(weight.detach().float(), {**self.shared, **self.tensors}, self.fields())


def expect_shape(tensors: Mapping[str, Tensor], key: str, shape: tuple[int, ...]) -> Tensor:
    """``tensors[key]`` in fp32, or ValueError when PEFT would build it with another shape (it could not load it)."""
    tensor = tensors[key]
    if tuple(tensor.shape) != tuple(shape):
        raise ValueError(f"{key} has shape {tuple(tensor.shape)}, PEFT builds {tuple(shape)}")
    return tensor.detach().float()


def json_number(value: float) -> float | int:
    """An integral float as an int (``16`` rather than ``16.0`` in the config)."""
    return int(value) if float(value).is_integer() else float(value)


def matches(form: NativeForm, adapter: nn.Module, weight: Tensor) -> bool:
    """PEFT's formula on the form's tensors gives ``adapter.merged_weight(W)`` to NATIVE_TOLERANCE (relative, fp32)."""
    with torch.no_grad():
        expected = adapter.merged_weight(weight.float()).float()
        try:
            got = form.peft_weight(weight)
        except (ValueError, RuntimeError, KeyError):  # shapes or fields PEFT would not build
            return False
    if got.shape != expected.shape:
        return False
    return bool(torch.linalg.norm(got - expected) <= NATIVE_TOLERANCE * torch.linalg.norm(expected).clamp(min=1e-30))


def _joint_config(forms: Mapping[str, NativeForm]) -> dict[str, Any] | None:
    """The config every layer agrees on, patterned fields resolved; None when they disagree."""
    first = next(iter(forms.values()))
    if any((f.peft_type, f.kind, f.config, set(f.patterned)) != (first.peft_type, first.kind, first.config,
                                                                     set(first.patterned)) for f in forms.values()):
        return None
    for key, tensor in first.shared.items():
        if any(key not in f.shared or not torch.equal(f.shared[key], tensor) for f in forms.values()):
            return None
    config = dict(first.config)
    for name, (pattern, _) in first.patterned.items():
        values = {layer: f.patterned[name][1] for layer, f in forms.items()}
        common = Counter(values.values()).most_common(1)[0][0]
        config[name] = common
        config[pattern] = {layer: v for layer, v in values.items() if v != common}
    return config


def native_export(layers: Mapping[str, Any]) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Any], str] | None:
    """The adapted layers (name -> AdaptedLinear) in their PEFT form, or None.

    ``(layer tensors by "<layer>.<suffix>", shared tensors by key, config fields, kind)``.
    """
    forms = {}
    for name, layer in layers.items():
        form = None if layer.adapter.rewrites_base else layer.adapter.peft_native()
        if form is None:
            return None
        forms[name] = form
    config = _joint_config(forms)
    if config is None or not all(matches(forms[n], layer.adapter, layer.base.weight) for n, layer in layers.items()):
        return None
    first = next(iter(forms.values()))
    tensors = {f"{name}.{key}": value.detach() for name, form in forms.items() for key, value in form.tensors.items()}
    shared = {key: value.detach() for key, value in first.shared.items()}
    return tensors, shared, {"peft_type": first.peft_type, **config}, first.kind
