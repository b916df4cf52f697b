"""OLoRA: LoRA initialised from the QR decomposition of W.

Büyükakyüz 2024, "OLoRA: Orthonormal Low-Rank Adaptation of Large Language
Models"; implemented as PEFT's ``olora_init`` (``init_lora_weights="olora"``).

    W = Q R                            (reduced QR in fp32: Q m x k, R k x n)
    B = Q[:, :r]  (orthonormal columns),   A = R[:r, :]
    W_res = W - s B A
    y = W_res x + s B A dropout(x);    merge: W_res + s B A;   #P = r (m + n)

Unlike PiSSA, the singular values are not divided by s: at init the adapter
holds ``s Q_r R_r`` and the residual compensates, so the model is unchanged
for any alpha.

Default alpha = 16 (s = 16/r): the value of PEFT's
examples/olora_finetuning/olora_finetuning.py (``lora_alpha=16``, there with
r=32), which is also peftlab's LoRA default. Dropout defaults to 0 (that
script uses 0.05).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from peftlab.methods.base import Adapter, check_rank
from peftlab.methods.lora import LoRA, LoRAAdapter
from peftlab.methods.pissa import no_init_option


class OLoRAAdapter(LoRAAdapter):
    """LoRA factors from the first r columns of Q and rows of R."""

    rewrites_base = True

    @torch.no_grad()
    def initialize(self, weight: Tensor, calibration: Tensor | None = None) -> Tensor | None:
        w = weight.to(torch.float32)
        Q, R = torch.linalg.qr(w)
        r = self.rank
        self.lora_A.data = R[:r].contiguous()
        self.lora_B.data = Q[:, :r].contiguous()
        residual = w - self.scale * self.lora_B @ self.lora_A
        return residual.to(weight.dtype)


class OLoRA(LoRA):
    """OLoRA: LoRA on W - s Q_r R_r, initialised at Q_r, R_r."""

    adapter_class = OLoRAAdapter

    def __init__(self, rank: int = 8, alpha: float = 16, dropout: float = 0.0, rslora: bool = False,
                 target_modules: Any = None, **rest: Any):
        no_init_option(rest)
        super().__init__(rank=rank, alpha=alpha, dropout=dropout, rslora=rslora,
                         target_modules=target_modules, **rest)

    def make_adapter(self, layer: nn.Linear, name: str) -> Adapter:
        check_rank(self.rank, layer, name)
        return self.adapter_class(layer.in_features, layer.out_features, self.rank, self.scale, self.dropout)
