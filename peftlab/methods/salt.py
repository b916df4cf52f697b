"""SALT: singular value adaptation with low-rank transformation.

Elsayed et al. 2025, "SALT: Singular Value Adaptation with Low-Rank
Transformation" (official code
BioMedIA-MBZUAI/SALT, SAM/SAM2).

    W = U diag(sigma) V^T   (full thin SVD in fp32, k = min(m, n) values; U, sigma, V frozen buffers)
    r_top = top_rank, or max(1, int(k * top_ratio))   (SAM2 code: ratio 0.1)
    trainable: scale a (r_top, init 1), shift c (r_top, init 0),
               X ((k - r_top) x rank, kaiming-uniform as in SAM2), Y (rank x (k - r_top), 0)
    S' = diag(sigma);  S'[:r_top, :r_top] = diag(a * sigma_top + c);  S'[r_top:, r_top:] += X Y
    W' = U ReLU(S') V^T,   y = W' x + b;     #P = 2 r_top + 2 (k - r_top) rank

The ReLU is elementwise on the whole k x k matrix, as in the official code (so
it also clips negative off-diagonal entries of the tail block X Y); it is kept
on purpose (our decision). For the framework the change is additive:
the base stays W and ``delta_weight() = U (ReLU(S') - diag(sigma)) V^T``,
which is exactly zero at init (sigma >= 0 and Y = 0), so the pretrained outputs
are reproduced exactly. (The official code uses ``U ReLU(S') V^T`` alone, which
differs from this by the SVD's float error ``W - U diag(sigma) V^T``.)

Regulariser (``loss_terms``, logged as reg/salt_reg), summed over layers as the
official encoder sums each block's loss:

    reg_weight * sum_layers ( ||diag(a * sigma_top + c) - diag(sigma_top)||_F + ||X Y||_F )

reg_weight defaults to 0.01 (the official ``train()`` default; its shipped
config sets 0). Official low-rank sizes r_L: 256 in the SAM2 globals, 4 in the
shipped config; peftlab's default ``rank`` is 8. X, Y init: SAM2's
kaiming/zero is used (SAM v1 draws both from 0.01 N(0, 1), which would change
the model at init). SAM2 calls ``kaiming_uniform_(X, a=sqrt(20), nonlinearity="relu")``:
with the ReLU gain sqrt(2) the ``a`` is ignored and X ~ U(-bound, bound) with
bound = sqrt(2) sqrt(3 / rank) (fan_in = rank, X's second dimension). Without
``nonlinearity="relu"`` the leaky-ReLU gain sqrt(2/21) would make X sqrt(21) ~ 4.6x smaller.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from peftlab.errors import UserError
from peftlab.methods.base import Adapter, AdapterMethod, adapted_layers, check_rank, positive_int


class SALTAdapter(Adapter):
    """Scale/shift of the top singular values plus a low-rank update of the tail spectrum."""

    def __init__(self, in_features: int, out_features: int, top_rank: int, rank: int):
        super().__init__(in_features, out_features)
        k = min(in_features, out_features)
        self.k, self.top_rank, self.rank = k, top_rank, rank
        self.salt_scale = nn.Parameter(torch.ones(top_rank))
        self.salt_shift = nn.Parameter(torch.zeros(top_rank))
        self.salt_X = nn.Parameter(torch.zeros(k - top_rank, rank))
        self.salt_Y = nn.Parameter(torch.zeros(rank, k - top_rank))
        # Persistent: the trained a, c, X, Y only mean something in this exact basis (SVD signs vary by device).
        self.register_buffer("salt_U", torch.zeros(out_features, k))
        self.register_buffer("salt_sigma", torch.zeros(k))
        self.register_buffer("salt_Vh", torch.zeros(k, in_features))

    def initialize(self, weight: Tensor, calibration: Tensor | None = None) -> Tensor | None:
        u, sigma, vh = torch.linalg.svd(weight.float(), full_matrices=False)
        self.salt_U.copy_(u)
        self.salt_sigma.copy_(sigma)
        self.salt_Vh.copy_(vh)
        nn.init.ones_(self.salt_scale)
        nn.init.zeros_(self.salt_shift)
        if self.salt_X.numel():
            nn.init.kaiming_uniform_(self.salt_X, a=math.sqrt(20), nonlinearity="relu")
        nn.init.zeros_(self.salt_Y)
        return None

    def expected_trainable(self) -> int:
        return 2 * self.top_rank + 2 * (self.k - self.top_rank) * self.rank

    def spectrum(self) -> Tensor:
        """``S'`` before the ReLU (k x k): diag(a sigma_top + c) and diag(sigma_tail) + X Y on the diagonal blocks."""
        top, tail = self.salt_sigma[: self.top_rank], self.salt_sigma[self.top_rank:]
        return torch.block_diag(torch.diag(self.salt_scale * top + self.salt_shift),
                                torch.diag(tail) + self.salt_X @ self.salt_Y)

    def spectral_delta(self) -> Tensor:
        """``ReLU(S') - diag(sigma)``: the change in singular-vector coordinates (k x k)."""
        return torch.relu(self.spectrum()) - torch.diag(self.salt_sigma)

    def delta_weight(self) -> Tensor:
        return self.salt_U @ self.spectral_delta() @ self.salt_Vh

    def delta_forward(self, x: Tensor) -> Tensor:
        # U (D (V^T x)) costs tokens*(n k + k^2 + k m); building the m x n delta first costs
        # m k^2 + m k n + tokens*m n. Take the cheaper one.
        m, n, k = self.out_features, self.in_features, self.k
        tokens = x.numel() // n
        d = self.spectral_delta().to(x.dtype)
        u, vh = self.salt_U.to(x.dtype), self.salt_Vh.to(x.dtype)
        if tokens * (n * k + k * k + k * m) <= m * k * k + m * k * n + tokens * m * n:
            return F.linear(F.linear(F.linear(x, vh), d), u)
        return F.linear(x, u @ d @ vh)

    def regularizer(self) -> Tensor:
        """``||diag(a sigma_top + c) - diag(sigma_top)||_F + ||X Y||_F`` for this layer."""
        top = self.salt_sigma[: self.top_rank]
        return (torch.linalg.vector_norm(self.salt_scale * top + self.salt_shift - top)
                + torch.linalg.matrix_norm(self.salt_X @ self.salt_Y))


class SALT(AdapterMethod):
    """SALT with its spectral regulariser (``reg_weight``; 0 turns it off)."""

    def __init__(self, top_ratio: float = 0.1, top_rank: int | None = None, rank: int = 8,
                 reg_weight: float = 0.01, target_modules: Any = None, **rest: Any):
        super().__init__(target_modules=target_modules, **rest)
        if isinstance(top_ratio, bool) or not isinstance(top_ratio, (int, float)) or not 0 < top_ratio <= 1:
            raise UserError(f"method.top_ratio={top_ratio} is not allowed: use a number in (0, 1]")
        self.top_ratio = float(top_ratio)
        self.top_rank = None if top_rank is None else positive_int(top_rank, "method.top_rank")
        self.rank = positive_int(rank, "method.rank")
        if isinstance(reg_weight, bool) or not isinstance(reg_weight, (int, float)) or reg_weight < 0:
            raise UserError(f"method.reg_weight={reg_weight} is not allowed: use a number >= 0")
        self.reg_weight = float(reg_weight)

    def make_adapter(self, layer: nn.Linear, name: str) -> Adapter:
        k = min(layer.in_features, layer.out_features)
        if self.top_rank is None:
            top_rank = max(1, int(k * self.top_ratio))
        else:
            check_rank(self.top_rank, layer, name, "method.top_rank")
            top_rank = self.top_rank
        return SALTAdapter(layer.in_features, layer.out_features, top_rank, self.rank)

    def loss_terms(self, model: nn.Module) -> dict[str, Tensor]:
        if self.reg_weight == 0:
            return {}
        terms = [layer.adapter.regularizer() for layer in adapted_layers(model).values()
                 if isinstance(layer.adapter, SALTAdapter)]
        return {"salt_reg": self.reg_weight * torch.stack(terms).sum()} if terms else {}
