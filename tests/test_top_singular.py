"""The top-r singular triplets (Gram route, with its precision chosen from the spectrum) and the
row-major randomized SVD, against matrices of known spectrum and against torch.svd_lowrank."""

from __future__ import annotations

import pytest
import torch

from peftlab.methods import top_singular
from peftlab.methods.top_singular import randomized_triplets, top_triplets


def known(m: int, n: int, sigma: torch.Tensor, seed: int = 0):
    """(W, U, V) with W = U diag(sigma) V^T in fp64, U and V orthonormal: the exact answer is known."""
    g = torch.Generator().manual_seed(seed)
    k = sigma.numel()
    U = torch.linalg.qr(torch.randn(m, k, generator=g, dtype=torch.float64)).Q
    V = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64)).Q
    return (U * sigma.double()) @ V.T, U, V


def subspace_error(found: torch.Tensor, exact: torch.Tensor) -> float:
    """Largest entry of found - exact after aligning each column's sign (columns are unit vectors)."""
    signs = torch.sign((found.double() * exact).sum(0))
    return (found.double() * signs - exact).abs().max().item()


def no_lapack_svd(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the full SVD was run")

    monkeypatch.setattr(torch.linalg, "svd", refuse)


@pytest.mark.parametrize("shape", [(96, 64), (64, 96)])
def test_a_well_separated_top_comes_from_the_fp32_gram_matrix_without_a_full_svd(shape, monkeypatch):
    r, k = 6, min(shape)
    sigma = torch.cat([torch.linspace(4.0, 1.0, r), torch.linspace(0.6, 0.01, k - r)])  # sigma_r / sigma_1 = 1/4
    W, U, V = known(*shape, sigma)
    no_lapack_svd(monkeypatch)
    u, s, vh = top_triplets(W.float(), r)
    assert u.shape == (shape[0], r) and s.shape == (r,) and vh.shape == (r, shape[1])
    assert u.dtype == s.dtype == vh.dtype == torch.float32
    torch.testing.assert_close(s.double(), sigma[:r].double(), atol=1e-5, rtol=1e-5)
    assert subspace_error(u, U[:, :r]) < 1e-5 and subspace_error(vh.T, V[:, :r]) < 1e-5


@pytest.mark.parametrize("shape", [(80, 48), (48, 80)])
def test_a_small_sigma_r_is_resolved_in_fp64_where_fp32_products_would_lose_it(shape, monkeypatch):
    r, k = 5, min(shape)
    sigma = torch.cat([torch.tensor([1.0, 0.02, 0.015, 0.01, 0.008]), torch.logspace(-2.4, -5, k - r)])
    # sigma_r / sigma_1 = 0.008: in an fp32 Gram matrix, v_r would be off by about
    # eps sigma_1^2 / (sigma_r^2 - sigma_{r+1}^2) = 1e-3
    W, U, V = known(*shape, sigma, seed=1)
    no_lapack_svd(monkeypatch)
    u, s, vh = top_triplets(W.float(), r)
    torch.testing.assert_close(s.double(), sigma[:r].double(), atol=0, rtol=1e-5)
    assert subspace_error(u, U[:, :r]) < 1e-4 and subspace_error(vh.T, V[:, :r]) < 1e-4


def test_a_weight_of_rank_below_r_falls_back_to_the_full_svd():
    g = torch.Generator().manual_seed(2)
    W = torch.randn(40, 3, generator=g) @ torch.randn(3, 30, generator=g)  # rank 3
    u, s, vh = top_triplets(W, 8)
    assert torch.isfinite(u).all() and torch.isfinite(vh).all()
    torch.testing.assert_close(u.T @ u, torch.eye(8), atol=1e-5, rtol=0)  # W V_r / sigma_r would not be
    torch.testing.assert_close((u * s) @ vh, W, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s[:3], torch.linalg.svdvals(W.double())[:3].float(), atol=1e-4, rtol=1e-5)


def test_the_precision_switch_is_at_sigma_r_over_sigma_1_of_one_eighth(monkeypatch):
    seen = []
    original = top_singular._from_gram

    def spy(tall, r, dtype, min_ratio):
        found = original(tall, r, dtype, min_ratio)
        seen.append((dtype, found is not None))
        return found

    monkeypatch.setattr(top_singular, "_from_gram", spy)
    for ratio, want in [(0.13, [(torch.float32, True)]),
                        (0.12, [(torch.float32, False), (torch.float64, True)])]:
        seen.clear()
        W, _, _ = known(50, 40, torch.cat([torch.tensor([1.0, 0.8, ratio]), torch.full((37,), ratio / 2)]))
        top_triplets(W.float(), 3)
        assert seen == want, (ratio, seen)


@pytest.mark.parametrize("shape", [(120, 50), (50, 120), (64, 64)])
@pytest.mark.parametrize("niter", [0, 2, 4])
def test_randomized_triplets_are_torch_svd_lowrank_with_the_same_draw(shape, niter):
    W = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(11)
    U, S, V = torch.svd_lowrank(W, q=4, niter=niter)
    after_theirs = torch.randn(1)
    torch.manual_seed(11)
    u, s, vh = randomized_triplets(W, 4, niter)
    assert torch.randn(1).equal(after_theirs)  # the same draw from the global generator, nothing more
    assert u.shape == U.shape and vh.shape == V.T.shape
    torch.testing.assert_close(s, S, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close((u * s) @ vh, (U * S) @ V.T, atol=1e-4, rtol=1e-4)
