"""The r largest singular triplets of a weight, for the methods that start from them.

PiSSA (and BA-LoRA), SORSA, SVFit and CorDA's IPA mode need only the top r
triplets ``(U_r, sigma_r, V_r^T)`` of an m x n weight, r much smaller than
k = min(m, n). A full LAPACK SVD computes all k of them.

**Exact: ``top_triplets``.** With W tall (m >= n; a wide W is transposed, which
exchanges U and V):

    W^T W = V diag(sigma^2) V^T          (symmetric eigendecomposition, k x k)
    V_r = eigenvectors of the r largest eigenvalues,  sigma_r = sqrt(lambda_r)
    U_r = W V_r diag(1 / sigma_r)

The k x k eigendecomposition costs about a third of the SVD of W (36 MiniLM
matrices: 261 ms against 786 ms on 2 CPU cores). Forming W^T W squares the
conditioning: singular vector i is resolved to about
eps sigma_1^2 / (sigma_i^2 - sigma_{i+1}^2) instead of the SVD's
eps sigma_1 / (sigma_i - sigma_{i+1}), that is sigma_1 / (sigma_i + sigma_{i+1})
times worse. Hence three regimes, chosen from the spectrum itself:

- sigma_r >= sigma_1 / 8: the fp32 Gram matrix; its error bound is at most 4x the
  fp32 SVD's (on MiniLM at r = 8 the rank-r part is 1.3e-5 from the fp64 SVD,
  LAPACK's fp32 SVD 1.6e-5 with 2 threads and 8.6e-5 with 1: the fp32 SVD is not
  reproducible across thread counts to better than that either);
- otherwise the Gram matrix in fp64 (exact products of fp32 inputs; resolves
  sigma_r down to about 1e-7 sigma_1), about 1.6x faster than the fp32 SVD;
- sigma_r < 1e-6 sigma_1 (a weight of rank below r): LAPACK's SVD, whose trailing
  triplets stay orthonormal where W V_r / sigma_r would not.

**Randomized: ``randomized_triplets``** is Halko et al.'s Algorithm 5.1 exactly
as ``torch.svd_lowrank(W, q=r, niter)`` runs it (the same random draw from the
global generator, the same QR steps), with the products taken as ``Y^T W^T``
and ``Y^T W``: BLAS then streams W row by row into a q-row output, about twice
as fast on a CPU as ``W Y`` into a q-column one.
"""

from __future__ import annotations

import torch
from torch import Tensor

Triplets = tuple[Tensor, Tensor, Tensor]  # U_r (m x r), sigma_r (r), V_r^T (r x n)

#: sigma_r / sigma_1 at or above which the fp32 Gram matrix resolves the top r triplets.
FP32_RATIO = 1 / 8
#: sigma_r / sigma_1 below which even the fp64 Gram matrix leaves U_r unresolved.
RESOLVED_RATIO = 1e-6


def top_triplets(weight: Tensor, r: int) -> Triplets:
    """The r largest singular triplets of the fp32 ``weight``, sigma descending."""
    wide = weight.shape[0] < weight.shape[1]
    tall = weight.mT if wide else weight
    found = _from_gram(tall, r, torch.float32, FP32_RATIO)
    if found is None:
        found = _from_gram(tall, r, torch.float64, RESOLVED_RATIO)
    if found is None:
        U, S, Vh = torch.linalg.svd(weight, full_matrices=False)
        return U[:, :r], S[:r], Vh[:r]
    left, sigma, right = found  # tall = left diag(sigma) right^T
    if wide:
        return right, sigma, left.mT
    return left, sigma, right.mT


def _from_gram(tall: Tensor, r: int, dtype: torch.dtype, min_ratio: float) -> Triplets | None:
    """``(U_r, sigma_r, V_r)`` of the tall matrix from its Gram matrix in ``dtype``, or None
    when sigma_r / sigma_1 < ``min_ratio`` (too small for this precision)."""
    a = tall.to(dtype)
    values, vectors = torch.linalg.eigh(a.mT @ a)  # ascending
    top = values[-r:].flip(0)
    if not top[-1] >= min_ratio**2 * top[0] or not top[0] > 0:  # also refuses NaN
        return None
    sigma = top.sqrt()
    v = vectors[:, -r:].flip(1)
    u = (a @ v) / sigma
    return u.to(tall.dtype), sigma.to(tall.dtype), v.to(tall.dtype)


def randomized_triplets(weight: Tensor, r: int, niter: int) -> Triplets:
    """``torch.svd_lowrank(weight, q=r, niter=niter)`` as ``(U, sigma, V^T)``, computed row-major."""
    wide = weight.shape[0] < weight.shape[1]
    a = weight.mT if wide else weight  # tall, m x n
    draw = torch.randn(a.shape[1], r, dtype=a.dtype, device=a.device)
    q = _orthonormal(draw.mT @ a.mT)  # rows of Q^T: an orthonormal basis of range(A R)
    for _ in range(niter):
        q = _orthonormal(_orthonormal(q @ a) @ a.mT)
    U, S, Vh = torch.linalg.svd(q @ a, full_matrices=False)  # B = Q^T A, r x n
    left = q.mT @ U
    if wide:
        return Vh.mT, S, left.mT
    return left, S, Vh


def _orthonormal(rows: Tensor) -> Tensor:
    """Q^T of the reduced QR of ``rows^T``: orthonormal rows spanning the same space."""
    return torch.linalg.qr(rows.mT).Q.mT
