"""Incremental PCA of a stream of row batches (Ross et al. 2008; scikit-learn's IncrementalPCA).

Each ``partial_fit`` updates the mean and variance, then takes the SVD of the
stacked matrix ``[diag(S) V^T ; X - batch mean ; mean correction]``, so the
components follow all rows seen so far without keeping them. As in EVA
(Paischer et al. 2024) and PEFT's port, the SVD is ``torch.svd_lowrank`` with
``q = 2 k`` and 4 iterations, its random test matrix drawn from seed 42 in a
forked RNG (the run's random stream is untouched), and signs are fixed by the
largest entry of each component.

Memory: the state is ``k`` components of width n plus mean and variance; a
step holds the stacked matrix, ``(k + tokens + 1) x n``.
"""

from __future__ import annotations

import torch
from torch import Tensor

LOWRANK_SEED = 42
LOWRANK_NITER = 4


class IncrementalPCA:
    """Top-``k`` principal components of all rows given to :meth:`partial_fit`."""

    def __init__(self, n_components: int):
        self.k = n_components
        self.components: Tensor | None = None  # k x n, rows of unit norm
        self.singular_values: Tensor | None = None
        self.explained_variance_ratio: Tensor | None = None
        self.mean: Tensor | None = None
        self.var: Tensor | None = None
        self.seen = torch.tensor([0])

    def _mean_and_var(self, X: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        new_count = torch.tensor([X.shape[0]], device=X.device)
        total = self.seen.to(X.device) + new_count
        last_sum = torch.zeros(X.shape[1], dtype=torch.float64, device=X.device) if self.mean is None \
            else self.mean * self.seen.to(X.device)
        new_sum = X.sum(dim=0, dtype=torch.float64)
        mean = (last_sum + new_sum) / total
        centred = X - new_sum / new_count
        correction = centred.sum(dim=0, dtype=torch.float64).square()
        new_unnormalized = centred.square().sum(dim=0, dtype=torch.float64) - correction / new_count
        if self.var is None:
            return mean, new_unnormalized / total, total
        ratio = self.seen.to(X.device).double() / new_count
        unnormalized = (self.var * self.seen.to(X.device) + new_unnormalized
                        + ratio / total * (last_sum / ratio - new_sum).square())
        return mean, unnormalized / total, total

    @staticmethod
    def _lowrank_svd(X: Tensor, q: int) -> tuple[Tensor, Tensor]:
        with torch.random.fork_rng(devices=[X.device] if X.device.type == "cuda" else []):
            torch.manual_seed(LOWRANK_SEED)
            _, S, V = torch.svd_lowrank(X, q=q, niter=LOWRANK_NITER)
        Vt = V.mH
        # Sign of each component: that of its largest entry (scikit-learn's svd_flip, v-based).
        signs = torch.sign(Vt[range(Vt.shape[0]), torch.argmax(torch.abs(Vt), dim=1)])
        return S, Vt * signs.view(-1, 1)

    @torch.no_grad()
    def partial_fit(self, X: Tensor) -> None:
        X = X.to(torch.float32).clone()
        n_rows = X.shape[0]
        mean, var, total = self._mean_and_var(X)
        if self.components is None:
            X -= mean
        else:
            batch_mean = torch.mean(X, dim=0)
            X -= batch_mean
            factor = torch.sqrt((self.seen.to(X.device).double() / total) * n_rows)
            X = torch.vstack((self.singular_values.view(-1, 1) * self.components, X, factor * (self.mean - batch_mean)))
        S, Vt = self._lowrank_svd(X, 2 * self.k)
        self.seen = total
        self.components = Vt[: self.k]
        self.singular_values = S[: self.k]
        self.explained_variance_ratio = (S**2 / torch.sum(var * total))[: self.k]
        self.mean, self.var = mean, var
