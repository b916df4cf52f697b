"""L2 toward the pretrained weights (the "L2-SP" penalty, Li et al. 2018,
"Explicit Inductive Bias for Transfer Learning with Convolutional Networks").

    R = sum over trainable parameters p of || p - p_0 ||_F^2

where p_0 is the parameter's value right after the method's initialisation
(for LoRA: B_0 = 0, A_0 random; for full fine-tuning: the pretrained weights).
Fits every method.
"""

from __future__ import annotations

import torch
from torch import Tensor

from peftlab.methods.base import trainable_parameters
from peftlab.regularizers.base import Regularizer, RegularizerContext


class L2ToPretrained(Regularizer):
    def term(self, ctx: RegularizerContext) -> Tensor:
        initial = ctx.method.initial
        total = None
        for name, p in trainable_parameters(ctx.model).items():
            p0 = initial.get(name)
            if p0 is None:
                continue
            d = (p - p0.to(p.device, p.dtype)).pow(2).sum()
            total = d if total is None else total + d
        return total if total is not None else torch.zeros(())
