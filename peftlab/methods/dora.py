"""DoRA: weight-decomposed low-rank adaptation.

Liu et al. 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation".

    V = W + s B A                         (LoRA on the direction)
    y = (m / ||V||_row) * (V x) + b       m in R^out, init m_j = ||W_j,:||_2
    ||V||_row is DETACHED by default (paper §4.3, NVlabs dora_simple=True, always on in PEFT);
    detach_norm=false lets the gradient flow through it (the paper's full form, dora_simple=False)
    merge: W <- (m / ||W + sBA||_row)[:, None] * (W + sBA);   #P = r (m + n) + m

The forward never materialises V:

    y = (m/||V||) * (W x + s B A x) + b

with ``W x + s B A x`` one fused node of :mod:`peftlab.methods.low_rank` and
the rescale plus bias one ``addcmul``. With dropout in training it is PEFT's form,
``base(x) + (m/||V|| - 1) * W dropout(x) + (m/||V||) * s B A dropout(x)``.
As in peft/tuners/lora/dora.py the input is cast to the adapter's dtype and W
and the norm are taken in that dtype, so outputs match PEFT's
``use_dora=True`` to float rounding.

Since the change is not additive, ``forward``, ``merged_weight`` and
``unmerged_weight`` are overridden; ``delta_weight()`` is the direction update
``s B A`` only (the effective weight is ``merged_weight(W)``, which needs W).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from peftlab.errors import UserError
from peftlab.methods.base import Adapter
from peftlab.methods.lora import LoRA, LoRAAdapter
from peftlab.methods.low_rank import lora_linear
from peftlab.methods.native import NativeForm


class DoRAAdapter(LoRAAdapter):
    """LoRA's ``lora_A`` / ``lora_B`` plus the magnitude vector ``lora_magnitude``."""

    def __init__(self, in_features: int, out_features: int, rank: int, scale: float,
                 dropout: float = 0.0, init: str = "kaiming", detach_norm: bool = True):
        super().__init__(in_features, out_features, rank, scale, dropout, init)
        self.detach_norm = detach_norm
        self.lora_magnitude = nn.Parameter(torch.ones(out_features))
        # ||W + sBA||_row at merge time: unmerging needs it (the merged weight alone does not determine it).
        self.register_buffer("merge_norm", None, persistent=False)

    def initialize(self, weight: Tensor, calibration: Tensor | None = None) -> Tensor | None:
        super().initialize(weight, calibration)  # A kaiming (or gaussian), B = 0
        self.lora_magnitude.data.copy_(torch.linalg.norm(weight.float(), dim=1))
        return None

    def expected_trainable(self) -> int:
        return self.rank * (self.in_features + self.out_features) + self.out_features

    def peft_native(self) -> NativeForm | None:
        """PEFT's ``use_dora`` LoRA: the factors, and the magnitude as ``lora_magnitude_vector``."""
        return self.lora_form({"lora_A", "lora_B", "lora_magnitude"}, {"lora_magnitude_vector": self.lora_magnitude})

    def weight_norm(self, weight: Tensor) -> Tensor:
        """``||W + s B A||`` per output row; outside the autograd graph when ``detach_norm``.

        Detached, B A is formed under no_grad, so the m x n product never enters the graph.
        """
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.detach_norm):
            lora_weight = (self.lora_B @ self.lora_A).to(weight.dtype)
            return torch.linalg.norm(weight + self.scale * lora_weight, dim=1).to(weight.dtype)

    def forward(self, x: Tensor, base: nn.Linear) -> Tensor:
        x = x.to(self.compute_dtype(x))
        weight = base.weight.to(x.dtype)
        mag_norm_scale = (self.lora_magnitude / self.weight_norm(weight)).view(1, -1)
        if self.training and not isinstance(self.dropout, nn.Identity):
            return self.dropped_forward(x, base, weight, mag_norm_scale)
        # (m/||V||) (W x + s B A x) + b: the W x product once, the low-rank part added by one
        # autograd node and the rescale and bias fused into one pass (PEFT's order takes five)
        direction = lora_linear(x, base, self.lora_A, self.lora_B, self.scale, self.dropout, weight=weight)
        if base.bias is None:
            return (mag_norm_scale * direction).to(base.weight.dtype)
        return torch.addcmul(base.bias.to(x.dtype), mag_norm_scale, direction).to(base.weight.dtype)

    def dropped_forward(self, x: Tensor, base: nn.Linear, weight: Tensor, mag_norm_scale: Tensor) -> Tensor:
        """PEFT's form with dropout: the base term on the clean input, the rescaling terms on the dropped one."""
        result = base(x.to(base.weight.dtype))
        x = self.dropout(x)
        lora_result = F.linear(F.linear(x, self.lora_A), self.lora_B)
        dora = (mag_norm_scale - 1) * F.linear(x, weight) + mag_norm_scale * lora_result * self.scale
        return result + dora.to(result.dtype)

    # -- merging: W' = (m/||W+sBA||) (W + sBA), computed in fp32 ------------------
    def weight_change(self, weight: Tensor) -> Tensor:
        """``m / ||W + s B A|| * (W + s B A) - W``: the whole change, rescaling included."""
        direction = weight.float() + self.delta_weight().float()
        return (self.lora_magnitude.float() / torch.linalg.norm(direction, dim=1))[:, None] * direction - weight.float()

    def merged_weight(self, weight: Tensor) -> Tensor:
        direction = weight.float() + self.delta_weight().float()
        norm = torch.linalg.norm(direction, dim=1)
        self.merge_norm = norm
        return ((self.lora_magnitude.float() / norm)[:, None] * direction).to(weight.dtype)

    def unmerged_weight(self, merged: Tensor) -> Tensor:
        if self.merge_norm is None:
            raise RuntimeError("DoRA unmerge needs the weight norm cached by merge(); this layer was not merged here")
        factor = (self.lora_magnitude.float() / self.merge_norm)[:, None]
        self.merge_norm = None
        return (merged.float() / factor - self.delta_weight().float()).to(merged.dtype)


class DoRA(LoRA):
    """DoRA: LoRA options (rank, alpha, dropout, rslora, init, target_modules) plus a trained magnitude;
    ``detach_norm`` (default true) detaches the row norm ||W + sBA|| from the gradient."""

    adapter_class = DoRAAdapter

    def __init__(self, detach_norm: bool = True, **options: Any):
        super().__init__(**options)
        if not isinstance(detach_norm, bool):
            raise UserError(f"method.detach_norm={detach_norm} is not allowed: use true or false")
        self.detach_norm = detach_norm

    def make_adapter(self, layer: nn.Linear, name: str) -> Adapter:
        adapter = super().make_adapter(layer, name)
        adapter.detach_norm = self.detach_norm
        return adapter
