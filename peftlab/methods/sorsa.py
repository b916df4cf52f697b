"""SORSA: singular values and orthonormal regularized singular vectors adaptation.

Cao 2024, "SORSA: Singular Values and Orthonormal Regularized Singular Vectors
Adaptation of Large Language Models" (official code
Gunale0926/SORSA, sorsalib).

    W = U diag(sigma) V^T   (exact top-r triplets, fp32: top_singular.top_triplets)
    B := U_r (m x r),  S := sigma_r (r),  A := V_r^T (r x n)     all trainable
    W_res = W - s B diag(S) A                                     frozen
    y = W_res x + s B diag(S) A dropout(x) + b
    s = alpha / r if alpha is given, else 1 (the default, alpha = null)
    merge: W_res + s B diag(S) A;   #P = r (m + n) + r

Orthonormal regulariser (not squared; mean over every adapted A and B):

    L_o = mean( ||A A^T - I_r||_F , ||B^T B - I_r||_F )

Gradient rule, following the official trainer: the task gradients are clipped
first, then ``backward((gamma / base_lr) * L_o)`` ADDS the orthonormal gradient,
which therefore bypasses clipping, and the optimizer steps. ``base_lr`` is the
configured (peak) learning rate, not the scheduled one. The intent is the
decoupled update ``W <- W - lr_t grad L - gamma grad L_o``. With plain SGD
the ortho step is ``gamma (lr_t / base_lr) grad L_o`` (exact at the peak lr);
with Adam(W) the ortho gradient goes through the adaptive moments together
with the task gradient, so the rule is only approximately decoupled. This runs in :meth:`SORSA.on_before_optimizer_step`.

Gradient accumulation over G micro-batches: the official trainer adds the
ortho term once per optimizer step with ``accelerator.backward``, which divides
every loss by G, so its effective gamma is gamma / G (the paper's gamma = 4e-4
ran with G = 64). We follow the official rule: the added gradient is that of
``(gamma / (G * base_lr)) L_o``, G given by the loop through :meth:`Method.on_train_begin` (``grad_accum``).

Official defaults: gamma 4e-4, lr 3e-5, r = 128; peftlab's YAML keeps rank 8
like the other adapters (override with method.rank=128 for the paper setting).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from peftlab.errors import UserError
from peftlab.methods.base import (Adapter, AdapterMethod, adapted_layers, check_rank, factor_gram_distances,
                                  positive_int, probability)
from peftlab.methods.low_rank import lora_linear
from peftlab.methods.top_singular import top_triplets


class SORSAAdapter(Adapter):
    """``s * B diag(S) A`` on the residual ``W - s B0 diag(S0) A0``; names follow the official sorsa_A/S/B."""

    rewrites_base = True

    def __init__(self, in_features: int, out_features: int, rank: int, scale: float, dropout: float = 0.0):
        super().__init__(in_features, out_features)
        self.rank = rank
        self.scale = scale
        self.sorsa_A = nn.Parameter(torch.zeros(rank, in_features))
        self.sorsa_S = nn.Parameter(torch.zeros(rank))
        self.sorsa_B = nn.Parameter(torch.zeros(out_features, rank))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def initialize(self, weight: Tensor, calibration: Tensor | None = None) -> Tensor | None:
        w = weight.float()
        u, sigma, vh = top_triplets(w, self.rank)
        self.sorsa_B.data.copy_(u)
        self.sorsa_S.data.copy_(sigma)
        self.sorsa_A.data.copy_(vh)
        return w - self.scale * ((self.sorsa_B * self.sorsa_S) @ self.sorsa_A)

    def change_rank_bound(self) -> int:
        return 2 * self.rank  # s B diag(S) A minus its start: rank <= 2r

    def expected_trainable(self) -> int:
        return self.rank * (self.in_features + self.out_features) + self.rank

    def delta_weight(self) -> Tensor:
        return self.scale * ((self.sorsa_B * self.sorsa_S) @ self.sorsa_A)

    def delta_forward(self, x: Tensor) -> Tensor:
        # r-wide path: A x, times S, then B; the m x n update is never built.
        return F.linear(F.linear(self.dropout(x), self.sorsa_A) * self.sorsa_S, self.sorsa_B) * self.scale

    def forward(self, x: Tensor, base: nn.Linear) -> Tensor:
        # base(x) + delta_forward(x) through the fused low-rank node, S folded into A
        return lora_linear(x, base, self.sorsa_S[:, None] * self.sorsa_A, self.sorsa_B, self.scale, self.dropout)

    def factors(self) -> tuple[Tensor, Tensor]:
        return self.sorsa_B, self.sorsa_A

    def orthonormality(self) -> tuple[Tensor, Tensor]:
        """``(||A A^T - I||_F, ||B^T B - I||_F)`` in fp32, differentiable."""
        return factor_gram_distances(self.sorsa_B, self.sorsa_A)


class SORSA(AdapterMethod):
    """SORSA with the official decoupled orthonormal gradient (``gamma``)."""

    provides = AdapterMethod.provides | {"factors"}

    def __init__(self, rank: int = 8, alpha: float | None = None, dropout: float = 0.0, gamma: float = 4e-4,
                 target_modules: Any = None, **rest: Any):
        super().__init__(target_modules=target_modules, **rest)
        self.rank = positive_int(rank, "method.rank")
        if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0):
            raise UserError(f"method.alpha={alpha} is not allowed: use a number > 0, or null for scale 1")
        self.alpha = None if alpha is None else float(alpha)
        self.dropout = probability(dropout, "method.dropout")
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or gamma < 0:
            raise UserError(f"method.gamma={gamma} is not allowed: use a number >= 0 (0 turns the regulariser off)")
        self.gamma = float(gamma)

    @property
    def scale(self) -> float:
        return 1.0 if self.alpha is None else self.alpha / self.rank

    def make_adapter(self, layer: nn.Linear, name: str) -> Adapter:
        check_rank(self.rank, layer, name)
        return SORSAAdapter(layer.in_features, layer.out_features, self.rank, self.scale, self.dropout)

    @staticmethod
    def orthonormal_loss(model: nn.Module) -> Tensor | None:
        """``L_o``: the mean of ||AA^T - I||_F and ||B^T B - I||_F over every SORSA adapter (None if none)."""
        norms = [n for layer in adapted_layers(model).values() if isinstance(layer.adapter, SORSAAdapter)
                 for n in layer.adapter.orthonormality()]
        return torch.stack(norms).mean() if norms else None

    def on_before_optimizer_step(self, model: nn.Module, step: int, base_lr: float) -> dict[str, Tensor]:
        with torch.enable_grad():
            loss = self.orthonormal_loss(model)
            if loss is None:
                return {}
            if self.gamma > 0 and base_lr > 0:
                # Added after clipping: the gradient of (gamma / base_lr) L_o bypasses the clip;
                # divided by G like the official accelerator.backward under accumulation.
                (self.gamma / (base_lr * self.grad_accum) * loss).backward()
        return {"sorsa_ortho": loss.detach()}
