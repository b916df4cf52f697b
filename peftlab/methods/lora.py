"""LoRA and rsLoRA.

Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models";
Kalajdzievski 2023, "A Rank Stabilization Scaling Factor for Fine-Tuning with LoRA".

    y = W x + s * B A dropout(x),   B in R^{m x r} = 0,  A in R^{r x n}
    A ~ kaiming_uniform(a=sqrt(5))  (or normal with std 1/r with init=gaussian)
    s = alpha / r   (LoRA)   or   alpha / sqrt(r)   (rsLoRA)
    merge: W <- W + s B A;          #P = r (m + n)

``LoRAAdapter`` is also the base class of the LoRA-shaped SVD methods
(PiSSA, MiLoRA, OLoRA, ...), which differ only in ``initialize``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from peftlab.errors import UserError
from peftlab.methods.base import Adapter, AdapterMethod, check_rank, positive_int, probability
from peftlab.methods.low_rank import lora_linear
from peftlab.methods.native import NativeForm, expect_shape, json_number


class LoRAAdapter(Adapter):
    """``s * B A`` on a frozen W; parameter names match PEFT's lora_A / lora_B."""

    #: the method's alpha and rsLoRA switch behind ``scale`` (set by LoRA.make_adapter), for PEFT's config
    alpha: float | None = None
    rslora: bool = False

    def __init__(self, in_features: int, out_features: int, rank: int, scale: float,
                 dropout: float = 0.0, init: str = "kaiming"):
        super().__init__(in_features, out_features)
        self.rank = rank
        self.scale = scale
        self.init = init
        self.lora_A = nn.Parameter(torch.zeros(rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def initialize(self, weight: Tensor, calibration: Tensor | None = None) -> Tensor | None:
        if self.init == "gaussian":
            nn.init.normal_(self.lora_A, std=1.0 / self.rank)
        else:
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)
        return None

    def expected_trainable(self) -> int:
        return self.rank * (self.in_features + self.out_features)

    def delta_weight(self) -> Tensor:
        return self.scale * (self.lora_B @ self.lora_A)

    def change_rank_bound(self) -> int:
        """``s B A`` minus its start: rank <= 2r (r when B starts at 0; 2r for PiSSA-like starts)."""
        return 2 * self.rank

    def factors(self) -> tuple[Tensor, Tensor]:
        return self.lora_B, self.lora_A

    def peft_native(self) -> NativeForm | None:
        """PEFT's LoRA: ``lora_A`` / ``lora_B`` as they are, when they are all the adapter has."""
        return self.lora_form({"lora_A", "lora_B"}, {})

    def lora_form(self, names: set[str], extra: dict[str, Tensor]) -> NativeForm | None:
        """PEFT's LoRA form when the parameters are exactly ``names`` and no buffer is saved; ``extra``: more tensors.

        Exact names, not isinstance: a subclass with more state (or a rewritten base) is not plain LoRA."""
        buffers = {n for n, _ in self.named_buffers(recurse=False)} - self._non_persistent_buffers_set
        if self.rewrites_base or buffers or {n for n, _ in self.named_parameters()} != names:
            return None
        alpha, rslora = self.alpha, self.rslora
        if alpha is None or not math.isclose(alpha / (math.sqrt(self.rank) if rslora else self.rank), self.scale,
                                             rel_tol=1e-9):
            alpha, rslora = self.scale * self.rank, False  # the same scale with PEFT's plain alpha / r
        drop = self.dropout.p if isinstance(self.dropout, nn.Dropout) else 0.0
        return NativeForm(
            peft_type="LORA", kind="dora" if extra else "lora", formula=peft_lora_weight,
            tensors={"lora_A.weight": self.lora_A, "lora_B.weight": self.lora_B, **extra},
            config={"use_rslora": rslora, "use_dora": bool(extra), "lora_dropout": drop, "bias": "none",
                    "fan_in_fan_out": False, "init_lora_weights": True},
            patterned={"r": ("rank_pattern", self.rank), "lora_alpha": ("alpha_pattern", json_number(alpha))})

    def delta_forward(self, x: Tensor) -> Tensor:
        # Two thin matmuls (r-wide) instead of materialising the m x n update.
        return F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B) * self.scale

    def forward(self, x: Tensor, base: nn.Linear) -> Tensor:
        # base(x) + delta_forward(x) as one autograd node (see peftlab.methods.low_rank)
        return lora_linear(x, base, self.lora_A, self.lora_B, self.scale, self.dropout)


def peft_lora_weight(weight: Tensor, tensors: dict[str, Tensor], fields: dict[str, Any]) -> Tensor:
    """The weight PEFT's LoRA computes on W (peft/tuners/lora/layer.py; DoRA's rescaling with ``use_dora``)."""
    r, (m, n) = fields["r"], weight.shape
    scale = fields["lora_alpha"] / (math.sqrt(r) if fields["use_rslora"] else r)
    direction = weight + scale * (expect_shape(tensors, "lora_B.weight", (m, r))
                                  @ expect_shape(tensors, "lora_A.weight", (r, n)))
    if not fields["use_dora"]:
        return direction
    magnitude = expect_shape(tensors, "lora_magnitude_vector", (m,))
    return (magnitude / torch.linalg.norm(direction, dim=1))[:, None] * direction


class LoRA(AdapterMethod):
    """LoRA (``rslora=true`` for rsLoRA scaling)."""

    adapter_class = LoRAAdapter
    provides = AdapterMethod.provides | {"factors"}

    def __init__(self, rank: int = 8, alpha: float = 16, dropout: float = 0.0, rslora: bool = False,
                 init: str = "kaiming", target_modules: Any = None, **rest: Any):
        super().__init__(target_modules=target_modules, **rest)
        self.rank = positive_int(rank, "method.rank")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
            raise UserError(f"method.alpha={alpha} is not allowed: use a number > 0")
        self.alpha = float(alpha)
        self.dropout = probability(dropout, "method.dropout")
        self.rslora = bool(rslora)
        if init not in ("kaiming", "gaussian"):
            raise UserError(f"method.init={init} is not allowed: use kaiming or gaussian")
        self.init = init

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)

    def make_adapter(self, layer: nn.Linear, name: str) -> Adapter:
        check_rank(self.rank, layer, name)
        adapter = self.adapter_class(layer.in_features, layer.out_features, self.rank, self.scale,
                                     self.dropout, self.init)
        adapter.alpha, adapter.rslora = self.alpha, self.rslora
        return adapter
