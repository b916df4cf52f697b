"""KL divergence from the pretrained model's predictions (the distillation term of
"Learning without Forgetting", Li & Hoiem 2016, with the pretrained model as teacher).

    R = mean over rows of KL(P0 || P) = sum_c P0_c (log P0_c - log P_c)

where a row is an example (classifiers: softmax over classes) or a response
token (causal LMs: softmax over the vocabulary), P0 the pretrained model's
prediction on the same batch (one extra forward without gradients, shared
with every other term that needs it) and P the trained model's. Unlike
BA-LoRA's LM consistency term (summed over tokens, divided by sequences), this
is a per-row mean, so its scale does not grow with response length. Fits every
method.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from peftlab.regularizers.base import Regularizer, RegularizerContext


def mean_kl(z: Tensor, z0: Tensor) -> Tensor:
    """``KL(softmax(z0) || softmax(z))`` averaged over the rows."""
    return F.kl_div(F.log_softmax(z.float(), -1), F.log_softmax(z0.float(), -1), reduction="batchmean",
                    log_target=True)


class KLToPretrained(Regularizer):
    needs = frozenset({"reference_outputs"})

    def term(self, ctx: RegularizerContext) -> Tensor:
        return mean_kl(ctx.outputs.logits, ctx.reference_outputs.logits)
