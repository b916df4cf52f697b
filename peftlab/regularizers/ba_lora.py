"""BA-LoRA's three regularizers: consistency, diversity, singular values.

"BA-LoRA: Bias-Alleviating Low-Rank Adaptation to Mitigate Catastrophic
Inheritance in Large Language Models" (2024; official code cyp-jlu-ai/BA-LoRA,
train.py). z are the logits of the model being trained, z0 those of the
pretrained model on the same batch (:attr:`RegularizerContext.reference_outputs`,
one extra forward without gradients, shared by every term that needs it).
The paper's total loss is ``L_task + 1e-4 L_cons + 3e-4 L_div + 1e-4 L_svd``
with k = 3, on top of PiSSA (``method=ba_lora``).

Classifiers (z: B x C):

    L_cons = mean( (normalize(z) - normalize(z0))^2 )          rows L2-normalised
    L_div  = sum_{i != j} C_ij^2 / C,   C = (z - mean z)^T (z - mean z) / (B - 1)
    L_svd  = - sum_{i <= k} sigma_i(z) / sum_i sigma_i(z)

Causal LMs (z: one row of V logits per response token, N rows for a batch of B):

    L_cons = KL(P0 || P) summed over tokens and vocabulary, divided by B
    L_div  = - mean over tokens of H(P_t)
    L_svd  = the ratio above on the N x V matrix of response-token logits

Where we differ from the official code, and why:

* L_svd is the intended ``-sum(sigma[:k]) / sum(sigma)``; the official code
  indexes the 1-D vector of singular values as 2-D (``s[:, :k]``).
* For causal LMs the official code uses logits of every position (prompt and
  padding included; ``batchmean`` over B x T x V, L_svd on B x (T V)). Our
  causal-LM task computes the output layer only at response positions (a
  262k-token vocabulary makes the rest most of the step), so the terms cover
  response tokens: L_cons keeps the official scale (sum over tokens / B), L_div
  the mean over tokens, and L_svd takes one row per token instead of one per
  sequence (ragged responses cannot be laid out as B x (T V) without the prompt
  positions' logits).
* The pretrained model's outputs come from the same network with the
  adapters set to their initial values (``method.reference()``) in eval mode,
  not from a second copy of the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from peftlab.errors import UserError
from peftlab.regularizers.base import Regularizer, RegularizerContext


def classifier_consistency(z: Tensor, z0: Tensor) -> Tensor:
    return F.mse_loss(F.normalize(z.float(), dim=-1), F.normalize(z0.float(), dim=-1))


def lm_consistency(z: Tensor, z0: Tensor, sequences: int) -> Tensor:
    """``KL(P0 || P)`` summed over the rows and the vocabulary, divided by the number of sequences."""
    kl = F.kl_div(F.log_softmax(z.float(), -1), F.log_softmax(z0.float(), -1), reduction="sum", log_target=True)
    return kl / max(sequences, 1)


def classifier_diversity(z: Tensor) -> Tensor:
    """Squared off-diagonal entries of the logits' class covariance, summed, over the class count."""
    n, classes = z.shape
    if n < 2:
        return z.new_zeros((), dtype=torch.float32)
    centred = z.float() - z.float().mean(0, keepdim=True)
    cov = centred.T @ centred / (n - 1)
    off = cov - torch.diag(torch.diagonal(cov))
    return off.pow(2).sum() / classes


def lm_diversity(z: Tensor) -> Tensor:
    """Minus the mean entropy of the next-token distributions."""
    log_p = F.log_softmax(z.float(), -1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    return -entropy.mean()


def singular_value_ratio(z: Tensor, k: int) -> Tensor:
    """``-sum(sigma[:k]) / sum(sigma)`` of a 2-D matrix (-1 when its rank is at most k)."""
    sigma = torch.linalg.svdvals(z.float())
    return -sigma[:k].sum() / sigma.sum().clamp_min(torch.finfo(torch.float32).tiny)


def logits_of(outputs) -> Tensor:
    return outputs.logits


class Consistency(Regularizer):
    """``L_cons``: stay close to the pretrained model's outputs."""

    needs = frozenset({"reference_outputs"})

    def term(self, ctx: RegularizerContext) -> Tensor:
        z, z0 = logits_of(ctx.outputs), logits_of(ctx.reference_outputs)
        if ctx.kind == "causal_lm":
            return lm_consistency(z, z0, int(ctx.batch["input_ids"].shape[0]))
        return classifier_consistency(z, z0)


class Diversity(Regularizer):
    """``L_div``: decorrelated class logits (classifiers), high-entropy predictions (causal LMs)."""

    def term(self, ctx: RegularizerContext) -> Tensor:
        z = logits_of(ctx.outputs)
        return lm_diversity(z) if ctx.kind == "causal_lm" else classifier_diversity(z)


class SingularValues(Regularizer):
    """``L_svd``: reward the share of the top-k singular values of the batch's logits."""

    def __init__(self, name: str, weight: float = 1.0, k: int = 3):
        super().__init__(name, weight)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise UserError(f"regularizer.{name}.k={k} is not allowed: use an integer >= 1")
        self.k = k

    def term(self, ctx: RegularizerContext) -> Tensor:
        return singular_value_ratio(logits_of(ctx.outputs), self.k)
