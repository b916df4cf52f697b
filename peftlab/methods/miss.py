"""MiSS (formerly Bone): a shared block added to every column block of W, or a block-affine map.

Kang 2024, "Bone: Block Affine Transformation as Parameter Efficient
Fine-tuning Methods for Large Language Models" (later renamed MiSS; official
code JL-er/Bone; Hugging Face PEFT ``peft.tuners.miss``, which replaced its
``bone`` tuner). Three modes, PEFT's ``init_weights``:

* ``mode=miss`` (PEFT ``init_weights=True``; Bone's default "bone" mode).
  One block ``D`` in R^{r x m}, init 0. The change tiles D^T along the input
  dimension; a last partial block uses D^T's first columns:

      dW[:, j r + c] = D[c, :]              for every column j r + c < n
      y = W x + (sum_j x[j r:(j+1) r]) D     (x zero-padded to a multiple of r)
      #P = r m

* ``mode=mini`` (PEFT ``init_weights="mini"``): D in R^{r x mini_r} repeated
  m / mini_r times along the output dimension, then as above; #P = r mini_r.
  Needs mini_r | m.

* ``mode=bat`` (Block Affine Transformation, PEFT ``init_weights="bat"``):
  D in R^{(m/r) x r x r}, init 0; one r x r block b_i per row block i, shared
  by the column blocks j of that row:

      W'_ij = W_ij + W_ij b_i + b_i,    y = W' x + b;   #P = r m
      unmerge: W_ij = (W'_ij - b_i)(I + b_i)^{-1}

  The change depends on W, so the forward builds W' explicitly (as PEFT does)
  and ``delta_weight()`` is not defined; ``merged_weight(W)`` is. Needs r | m
  and r | n. Dropout does not apply in this mode (PEFT ignores it; we refuse it).

Every mode starts at D = 0, so the pretrained outputs are reproduced exactly.
Parameter names follow PEFT (``miss_block``) and outputs match PEFT's MiSS to
float rounding (tests/test_miss.py). PEFT's ``init_weights=False`` (a random
block that changes the model at init) is not offered.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from peftlab.errors import UserError
from peftlab.methods.base import Adapter, AdapterMethod, positive_int, probability
from peftlab.methods.native import NativeForm, expect_shape

MODES = ("miss", "mini", "bat")
#: PEFT's ``init_weights`` of each mode
PEFT_MODES = {"miss": True, "mini": "mini", "bat": "bat"}


class MiSSAdapter(Adapter):
    """The MiSS block ``miss_block`` of one Linear, in one of the three modes."""

    def __init__(self, in_features: int, out_features: int, rank: int, mode: str = "miss",
                 mini_rank: int = 1, dropout: float = 0.0):
        super().__init__(in_features, out_features)
        self.block_rank, self.mode, self.mini_rank = rank, mode, mini_rank
        shape = {"miss": (rank, out_features), "mini": (rank, mini_rank),
                 "bat": (out_features // rank, rank, rank)}[mode]
        self.miss_block = nn.Parameter(torch.zeros(shape))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def initialize(self, weight: Tensor, calibration: Tensor | None = None) -> Tensor | None:
        nn.init.zeros_(self.miss_block)
        return None

    def expected_trainable(self) -> int:
        return self.block_rank * (self.mini_rank if self.mode == "mini" else self.out_features)

    def shared_block(self) -> Tensor:
        """The r x m block D added to every column block (mini: D repeated along the outputs)."""
        if self.mode == "mini":
            return self.miss_block.repeat(1, self.out_features // self.mini_rank)
        return self.miss_block

    # -- miss / mini ---------------------------------------------------------------
    def delta_weight(self) -> Tensor:
        if self.mode == "bat":
            raise RuntimeError("MiSS bat's change depends on W: use merged_weight(W)")
        tiles = math.ceil(self.in_features / self.block_rank)
        return self.shared_block().T.repeat(1, tiles)[:, : self.in_features]

    def delta_forward(self, x: Tensor) -> Tensor:
        r = self.block_rank
        x = self.dropout(x)
        pad = -x.shape[-1] % r
        if pad:
            x = F.pad(x, (0, pad))
        summed = x.reshape(*x.shape[:-1], x.shape[-1] // r, r).sum(dim=-2)
        return summed @ self.shared_block().to(x.dtype)

    # -- bat -------------------------------------------------------------------------
    def blocks(self, weight: Tensor) -> Tensor:
        """W as its r x r blocks, indexed [j, i] (column block j, row block i)."""
        r = self.block_rank
        return weight.reshape(self.out_features // r, r, self.in_features // r, r).permute(2, 0, 1, 3)

    def from_blocks(self, blocks: Tensor) -> Tensor:
        return blocks.permute(1, 2, 0, 3).reshape(self.out_features, self.in_features)

    def bat_weight(self, weight: Tensor) -> Tensor:
        """``W'`` with ``W'_ij = W_ij + W_ij b_i + b_i``, in the block's dtype."""
        b = self.miss_block
        w = self.blocks(weight.to(b.dtype))
        return self.from_blocks(w + w @ b + b)

    def forward(self, x: Tensor, base: nn.Linear) -> Tensor:
        if self.mode != "bat":
            return super().forward(x, base)
        weight = self.bat_weight(base.weight)
        bias = None if base.bias is None else base.bias.to(weight.dtype)
        return F.linear(x.to(weight.dtype), weight, bias).to(x.dtype)

    def weight_change(self, weight: Tensor) -> Tensor:
        if self.mode == "bat":
            return self.bat_weight(weight).float() - weight.float()
        return super().weight_change(weight)

    def merged_weight(self, weight: Tensor) -> Tensor:
        if self.mode == "bat":
            return self.bat_weight(weight).to(weight.dtype)
        return super().merged_weight(weight)

    def unmerged_weight(self, merged: Tensor) -> Tensor:
        if self.mode != "bat":
            return super().unmerged_weight(merged)
        b = self.miss_block.float()
        eye = torch.eye(self.block_rank, device=b.device)
        # X (I + b_i) = W'_ij - b_i, solved from the right for every block.
        w = torch.linalg.solve(eye + b, self.blocks(merged.float()) - b, left=False)
        return self.from_blocks(w).to(merged.dtype)

    def peft_native(self) -> NativeForm:
        """PEFT's MiSS: ``miss_block`` as it is; the mode is PEFT's ``init_weights``."""
        drop = self.dropout.p if isinstance(self.dropout, nn.Dropout) else 0.0
        return NativeForm(peft_type="MISS", kind="miss", tensors={"miss_block": self.miss_block},
                          config={"r": self.block_rank, "init_weights": PEFT_MODES[self.mode], "mini_r": self.mini_rank,
                                  "miss_dropout": drop, "bias": "none"},
                          formula=peft_miss_weight)

    def extra_repr(self) -> str:
        mini = f", mini_rank={self.mini_rank}" if self.mode == "mini" else ""
        return f"mode={self.mode}, rank={self.block_rank}{mini}"


def peft_miss_weight(weight: Tensor, tensors: dict[str, Tensor], fields: dict[str, Any]) -> Tensor:
    """The weight PEFT's MiSS computes on W (peft/tuners/miss/layer.py, ``get_delta_weight_miss``;
    ``get_delta_weight`` for bat)."""
    r, mode, (m, n) = fields["r"], fields["init_weights"], weight.shape
    if mode == "bat":
        block = expect_shape(tensors, "miss_block", (m // r, r, r))
        w = weight.reshape(m // r, r, n // r, r).permute(2, 0, 1, 3)  # [column block, row block]
        return (w + w @ block + block).permute(1, 2, 0, 3).reshape(m, n)
    if mode == "mini":
        block = expect_shape(tensors, "miss_block", (r, fields["mini_r"])).repeat(1, m // fields["mini_r"])
    else:
        block = expect_shape(tensors, "miss_block", (r, m))
    out = weight.clone()
    for start in range(0, n, r):  # every column block gets block^T (a last partial one its first columns)
        width = min(r, n - start)
        out[:, start:start + width] += block.T[:, :width]
    return out


class MiSS(AdapterMethod):
    """MiSS / Bone: ``mode`` miss (default), mini or bat; ``rank`` is PEFT's r, ``mini_rank`` its mini_r."""

    def __init__(self, rank: int = 8, mode: str = "miss", mini_rank: int = 1, dropout: float = 0.0,
                 target_modules: Any = None, **rest: Any):
        super().__init__(target_modules=target_modules, **rest)
        # Kept as block_rank, not rank: export's default factor rank (2 x rank) assumes a low-rank
        # change, and bat's change W b + b is not low-rank; the numerical rank is used instead.
        self.block_rank = positive_int(rank, "method.rank")
        if mode not in MODES:
            raise UserError(f"method.mode={mode} is not allowed: use one of {', '.join(MODES)}")
        self.mode = mode
        self.mini_rank = positive_int(mini_rank, "method.mini_rank")
        self.dropout = probability(dropout, "method.dropout")
        if mode == "bat" and self.dropout > 0:
            raise UserError(f"method.dropout={dropout} has no effect with method.mode=bat: use method.dropout=0")

    def make_adapter(self, layer: nn.Linear, name: str) -> Adapter:
        r, m, n = self.block_rank, layer.out_features, layer.in_features
        shape = f"layer '{name}' ({m}x{n})"
        if r > n:
            raise UserError(f"method.rank={r} is larger than the input size of {shape}: use method.rank <= {n}")
        if self.mode == "bat" and (m % r or n % r):
            raise UserError(f"method.rank={r} does not divide both sizes of {shape}, which mode=bat needs: "
                            f"use a common divisor of {m} and {n}")
        if self.mode == "mini" and m % self.mini_rank:
            raise UserError(f"method.mini_rank={self.mini_rank} does not divide the output size of {shape}: "
                            f"use a divisor of {m}")
        return MiSSAdapter(n, m, r, self.mode, self.mini_rank, self.dropout)
