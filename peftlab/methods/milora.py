"""MiLoRA: the adapter starts as the minor singular part of W.

Wang et al. 2024, "MiLoRA: Harnessing Minor Singular Components for
Parameter-Efficient LLM Finetuning".

PiSSA with the **last** r (smallest) singular triplets, from the exact
``torch.linalg.svd`` in fp32 (as the official svd_init.py):

    B = U[:, -r:] diag(sqrt(sigma[-r:] / s)),   A = diag(sqrt(sigma[-r:] / s)) V[:, -r:]^T
    W_res = W - s B A                  (= the top k - r part of W)
    y = W_res x + s B A dropout(x);    merge: W_res + s B A;   #P = r (m + n)

Defaults follow the MiLoRA scripts (LLM-Adapters setting): alpha = r (s = 1)
and dropout 0.05. There is no fast-SVD option: a randomized range finder only
finds the top of the spectrum.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from peftlab.errors import UserError
from peftlab.methods.pissa import PiSSA, PiSSAAdapter


class MiLoRAAdapter(PiSSAAdapter):
    """LoRA factors initialised from the bottom-r singular triplets of W."""

    def triplets(self, weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        r = self.rank
        U, S, Vh = torch.linalg.svd(weight, full_matrices=False)
        return U[:, -r:], S[-r:], Vh[-r:]


class MiLoRA(PiSSA):
    """MiLoRA: LoRA on W minus its r minor singular components, initialised at them."""

    adapter_class = MiLoRAAdapter

    def __init__(self, rank: int = 8, alpha: float | None = None, dropout: float = 0.05, rslora: bool = False,
                 target_modules: Any = None, **rest: Any):
        if "svd_niter" in rest:
            raise UserError("method.svd_niter is not an option of milora: it needs the exact SVD (smallest triplets)")
        super().__init__(rank=rank, alpha=alpha, dropout=dropout, rslora=rslora, svd_niter=None,
                         target_modules=target_modules, **rest)
