"""Nuclear norm of the weight change (SaRA's low-rank constraint).

SaRA (2024; official code sjtuplayer/SaRA, optim/adamw.py) adds
``lambda_rank ||W o M||_*`` for one random large matrix per step. Here the
matrix is each adapted layer's weight change ``dW = W - W_pretrained``
(``Method.weight_changes``: an adapter's delta minus its initial delta, or a
trained weight minus its initial value), which is what a low-rank constraint
on an update means for every method:

    R = mean over the chosen layers of ||dW||_* = sum_i sigma_i(dW)

Options, for large models:

* ``sample=N``: N layers drawn uniformly at random (torch's generator, so runs
  and resumes are reproducible) each micro-batch; the mean over them is an
  unbiased estimate of the mean over all layers. SaRA draws 1.
* ``lowrank=q``: for layers with min(m, n) > q, ``||Q^T dW||_*`` with Q an
  orthonormal basis (q columns) of the range of ``dW Omega`` for a Gaussian
  n x q Omega, refined by one power iteration (Halko et al. 2011). Q is held
  constant in the backward pass, which avoids differentiating a QR of a
  possibly rank-deficient matrix (LoRA's dW is 0 at step 0). The value is a
  lower bound, exact when rank(dW) <= q (LoRA: rank <= r; PiSSA: <= 2r), and
  so is its gradient ``Q U V^T``.

The gradient is the minimal subgradient ``U_r V_r^T`` over the numerical rank
r (0 at a zero change), not torch's default, which adds arbitrary singular
vectors of the zero singular values.

Where we differ from SaRA: SaRA's matrix is the sparse trained weight itself
(``W o M``), not a change, since its trainable entries start near 0.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from peftlab.errors import UserError
from peftlab.regularizers.base import Regularizer, RegularizerContext


def nuclear_norm(d: Tensor) -> Tensor:
    """``sum_i sigma_i(d)`` whose gradient is the minimal subgradient ``U_r V_r^T`` (r = numerical rank):
    singular values below rounding level are left out, so that the arbitrary singular vectors of a
    rank-deficient matrix (LoRA's update, a zero change) do not enter the gradient. No host sync."""
    sigma = torch.linalg.svdvals(d.float())
    tol = sigma.max().detach() * max(d.shape) * torch.finfo(torch.float32).eps
    return (sigma * (sigma.detach() > tol)).sum()


def sketched_nuclear_norm(d: Tensor, q: int, power_iterations: int = 1) -> Tensor:
    """``||Q^T d||_*`` with Q a fixed orthonormal basis of d's sampled range (see the module docstring)."""
    d = d.float()
    with torch.no_grad():
        omega = torch.randn(d.shape[1], q, device=d.device)
        basis = torch.linalg.qr(d @ omega).Q
        for _ in range(power_iterations):
            basis = torch.linalg.qr(d @ (d.T @ basis)).Q
    return nuclear_norm(basis.T @ d)


def optional_count(value, option: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{option}={value} is not allowed: use null or an integer >= 1")
    return value


class NuclearNorm(Regularizer):
    needs = frozenset({"weight_change"})

    def __init__(self, name: str, weight: float = 1.0, sample: int | None = None, lowrank: int | None = None):
        super().__init__(name, weight)
        self.sample = optional_count(sample, f"regularizer.{name}.sample")
        self.lowrank = optional_count(lowrank, f"regularizer.{name}.lowrank")

    def setup(self, model: nn.Module, method) -> None:
        if not method.weight_changes(model):
            raise UserError(f"regularizer '{self.name}' found no trained matrix to take the nuclear norm of: "
                            f"check method.target_modules")

    def norm(self, d: Tensor) -> Tensor:
        if self.lowrank is not None and min(d.shape) > self.lowrank:
            return sketched_nuclear_norm(d, self.lowrank)
        return nuclear_norm(d)

    def term(self, ctx: RegularizerContext) -> Tensor:
        changes = list(ctx.method.weight_changes(ctx.model).values())
        if self.sample is not None and self.sample < len(changes):
            chosen = torch.randperm(len(changes))[: self.sample].tolist()
            changes = [changes[i] for i in chosen]
        return torch.stack([self.norm(d) for d in changes]).mean()
