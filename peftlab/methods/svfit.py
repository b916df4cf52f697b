"""SVFit: train only the top singular values of W.

Sun et al. 2024, "SVFit: Parameter-Efficient Fine-Tuning of Large Pre-Trained
Models Using Singular Values" (only the
abstract is available, no official code).

    W = U diag(sigma) V^T               (exact top-r triplets in fp32, top_singular.top_triplets;
                                         the full SVD when the rank comes from an energy threshold)
    W_e = W - U_r diag(sigma_r) V_r^T   (frozen base, rewritten)
    y = W_e x + U_r diag(sigma') V_r^T x,   sigma' initialised to sigma_r
    merge: W_e + U_r diag(sigma') V_r^T;    #P = r

Only ``sigma'`` (r values) is trainable. ``U_r`` (m x r) and ``V_r`` (n x r)
are frozen buffers saved with the adapter.

Choosing r: ``rank`` (default 8) gives a fixed r per layer. ``energy`` (e.g.
0.99) overrides it and picks, per layer, the smallest r with
``sum_{i<=r} sigma_i^2 / sum_i sigma_i^2 >= energy``. The paper keeps the
singular values "capturing >99% of the information" without saying how
information is measured; this is the energy (squared Frobenius norm) reading,
an interpretation of peftlab, not of an official implementation.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from peftlab.errors import UserError
from peftlab.methods.base import Adapter, AdapterMethod, check_rank, positive_int
from peftlab.methods.low_rank import lora_linear
from peftlab.methods.top_singular import top_triplets


def energy_rank(sigma: Tensor, energy: float) -> int:
    """The smallest r whose top-r singular values hold ``energy`` of sum(sigma^2)."""
    power = sigma.to(torch.float64) ** 2
    fraction = torch.cumsum(power, 0) / power.sum()
    r = int((fraction < energy).sum().item()) + 1
    return max(1, min(r, sigma.numel()))


class SVFitAdapter(Adapter):
    """``U_r diag(sigma) V_r^T`` with only sigma trainable, on the frozen rest of W."""

    rewrites_base = True

    def __init__(self, in_features: int, out_features: int, rank: int | None = None,
                 energy: float | None = None):
        super().__init__(in_features, out_features)
        if rank is None and energy is None:
            raise ValueError("SVFitAdapter needs a rank or an energy threshold")
        self.energy = energy
        self.rank = 0 if energy is not None else rank  # with energy, set from the spectrum at initialize
        self.register_buffer("U_r", torch.zeros(out_features, self.rank))
        self.register_buffer("V_r", torch.zeros(in_features, self.rank))
        self.sigma = nn.Parameter(torch.zeros(self.rank))

    @torch.no_grad()
    def initialize(self, weight: Tensor, calibration: Tensor | None = None) -> Tensor | None:
        w = weight.to(torch.float32)
        if self.energy is None:  # only the top r: the fast exact triplets
            U, S, Vh = top_triplets(w, self.rank)
        else:  # the rank comes from the whole spectrum
            U, S, Vh = torch.linalg.svd(w, full_matrices=False)
            self.rank = energy_rank(S, self.energy)
        r = self.rank
        self.U_r = U[:, :r].contiguous()
        self.V_r = Vh[:r].t().contiguous()
        self.sigma = nn.Parameter(S[:r].clone())
        residual = w - (self.U_r * self.sigma) @ self.V_r.t()
        return residual.to(weight.dtype)

    def change_rank_bound(self) -> int:
        return self.rank  # only the top-r singular values move: U_r diag(delta sigma) V_r^T

    def expected_trainable(self) -> int:
        return self.rank

    def delta_weight(self) -> Tensor:
        return (self.U_r * self.sigma) @ self.V_r.t()

    def delta_forward(self, x: Tensor) -> Tensor:
        # ((x V_r) * sigma) U_r^T: two thin r-wide matmuls.
        return F.linear(F.linear(x, self.V_r.t()) * self.sigma, self.U_r)

    def forward(self, x: Tensor, base: nn.Linear) -> Tensor:
        # base(x) + delta_forward(x) through the fused low-rank node, sigma folded into V_r^T
        return lora_linear(x, base, self.sigma[:, None] * self.V_r.t(), self.U_r, 1.0, nn.Identity())

    def extra_repr(self) -> str:
        return f"rank={self.rank}" + (f", energy={self.energy}" if self.energy is not None else "")


class SVFit(AdapterMethod):
    """SVFit: fine-tune the top-r singular values of each target Linear."""

    def __init__(self, rank: int = 8, energy: float | None = None, target_modules: Any = None, **rest: Any):
        super().__init__(target_modules=target_modules, **rest)
        self.rank = positive_int(rank, "method.rank")
        if energy is not None and (isinstance(energy, bool) or not isinstance(energy, (int, float))
                                   or not 0 < energy <= 1):
            raise UserError(
                f"method.energy={energy} is not allowed: use null (fixed method.rank) or a number in (0, 1]"
            )
        self.energy = None if energy is None else float(energy)

    def make_adapter(self, layer: nn.Linear, name: str) -> Adapter:
        if self.energy is not None:
            return SVFitAdapter(layer.in_features, layer.out_features, energy=self.energy)
        check_rank(self.rank, layer, name)
        return SVFitAdapter(layer.in_features, layer.out_features, rank=self.rank)
