"""Orthonormality of factor matrices (SORSA; AdaLoRA's orthogonality).

SORSA (Cao 2024, official code Gunale0926/SORSA) and AdaLoRA (Zhang et al.
2023, official code QingruZhang/AdaLoRA, ``regularization_loss``) penalise the
same quantity, not squared, averaged over every factor matrix of every adapted
layer:

    R = mean over layers and over {A, B} of ( ||A A^T - I_r||_F , ||B^T B - I_r||_F )

with B (m x r) and A (r x n) the adapter's factors (``Adapter.factors()``;
AdaLoRA's P and Q, SORSA's U and V^T). The two YAMLs differ in their default
weight: 0.1 for AdaLoRA's original code (PEFT uses 0.5); SORSA adds its
gradient after clipping, scaled by gamma / base lr, which is ``method=sorsa``'s
own rule (``method.gamma``), not a loss weight. Here the term is an ordinary
loss term, clipped with the task gradient. It is zero exactly when every A has
orthonormal rows and every B orthonormal columns (SORSA's init; not LoRA's,
whose B starts at 0, nor PiSSA's, whose factors carry sqrt(sigma)).
Fits methods whose adapters have factor matrices.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from peftlab.errors import UserError
from peftlab.methods.base import factor_gram_distances, factor_pairs
from peftlab.regularizers.base import Regularizer, RegularizerContext


def orthonormality(pairs: list[tuple[Tensor, Tensor]]) -> Tensor:
    norms = [n for b, a in pairs for n in factor_gram_distances(b, a)]
    return torch.stack(norms).mean()


class Orthonormality(Regularizer):
    needs = frozenset({"factors"})

    def setup(self, model: nn.Module, method) -> None:
        if not factor_pairs(model):
            raise UserError(f"regularizer '{self.name}' found no adapted layer with factor matrices: "
                            f"check method.target_modules")

    def term(self, ctx: RegularizerContext) -> Tensor:
        return orthonormality(list(factor_pairs(ctx.model).values()))
