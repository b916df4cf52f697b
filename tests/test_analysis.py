"""Spectral diagnostics on constructed matrices whose answers are known."""

from __future__ import annotations

import json
import math

import pytest
import torch

from peftlab.analysis import (
    DEFAULT_EPSILONS,
    analyze_layers,
    frobenius_norm,
    intruder_curve,
    intruder_dimensions,
    rankme,
    spectral_norm,
    subspace_overlap,
)

D = 48


def _orthogonal(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    return q


@pytest.fixture(scope="module")
def base():
    """W0 = U diag(s) V^T with a known, strictly decaying spectrum."""
    u, v = _orthogonal(D, 0), _orthogonal(D, 1)
    s = torch.linspace(5.0, 0.1, D)
    return u, s, v, u @ torch.diag(s) @ v.T


def _intruder_update(u, v, scale=20.0, k=10):
    """A rank-1 update along a direction spread evenly over the pretrained tail (not the top-k)."""
    tail_u = u[:, k:].sum(dim=1) / math.sqrt(D - k)
    tail_v = v[:, k:].sum(dim=1) / math.sqrt(D - k)
    return scale * torch.outer(tail_u, tail_v)


def _inside_update(u, s, v, r=5):
    """Scale the top-r pretrained directions by 1.5 (distinct values, same vectors)."""
    return u[:, :r] @ torch.diag(0.5 * s[:r]) @ v[:, :r].T


def test_new_direction_with_large_singular_value_is_an_intruder(base):
    u, _, v, w0 = base
    dw = _intruder_update(u, v)
    out = intruder_dimensions(w0, w0 + dw, top_k=10, epsilon=0.5)
    assert out["intruders"] == 1
    assert len(out["similarities"]) == 10
    # The top singular vector of W_ft is the new direction: its best cosine is small.
    assert out["similarities"][0] < 0.5
    assert sorted(out["similarities"])[1] > 0.9


def test_update_inside_the_pretrained_top_subspace_has_no_intruder(base):
    u, s, v, w0 = base
    out = intruder_dimensions(w0, w0 + _inside_update(u, s, v), top_k=10, epsilon=0.5)
    assert out["intruders"] == 0
    assert min(out["similarities"]) > 0.99


def test_identical_weights_have_no_intruders(base):
    *_, w0 = base
    assert intruder_dimensions(w0, w0.clone())["intruders"] == 0


@pytest.mark.parametrize("k", [1, 3, 8])
def test_rankme_of_equal_singular_values_is_the_rank(k):
    u, v = _orthogonal(D, 2), _orthogonal(D, 3)
    delta = 0.7 * u[:, :k] @ v[:, :k].T
    assert rankme(delta) == pytest.approx(k, rel=1e-3)


def test_rankme_of_zero_update_is_zero():
    assert rankme(torch.zeros(4, 5)) == 0.0


def test_norms():
    delta = torch.diag(torch.tensor([3.0, 4.0, 0.0]))
    assert spectral_norm(delta) == pytest.approx(4.0)
    assert frobenius_norm(delta) == pytest.approx(5.0)


def test_subspace_overlap_inside_and_orthogonal(base):
    u, _, v, w0 = base
    r = 4
    inside = u[:, :r] @ torch.diag(torch.tensor([2.0, 1.5, 1.0, 0.5])) @ v[:, :r].T
    assert subspace_overlap(w0, inside, r) == pytest.approx(1.0, abs=1e-4)
    ortho = u[:, -r:] @ torch.diag(torch.tensor([2.0, 1.5, 1.0, 0.5])) @ v[:, -r:].T
    assert subspace_overlap(w0, ortho, r) == pytest.approx(0.0, abs=1e-4)
    # r is capped by the update's numerical rank: a rank-2 update inside the top-2 with r=8.
    rank2 = u[:, :2] @ torch.diag(torch.tensor([1.0, 0.5])) @ v[:, :2].T
    assert subspace_overlap(w0, rank2, 8) == pytest.approx(1.0, abs=1e-4)
    assert subspace_overlap(w0, torch.zeros_like(w0), 4) == 0.0


def test_intruder_curve_is_monotone():
    sims = [[0.05, 0.3, 0.55, 0.95], [0.2, 0.45, 0.8]]
    curve = intruder_curve(sims, DEFAULT_EPSILONS)
    assert curve == sorted(curve)
    assert curve[0] == 1 and curve[-1] == 6
    assert intruder_curve(sims, [0.5]) == [4]


def test_analyze_layers_model_summary_is_json(base):
    u, s, v, w0 = base
    pairs = {
        "layer.intruder": (w0, _intruder_update(u, v)),
        "layer.inside": (w0, _inside_update(u, s, v)),
    }
    out = analyze_layers(pairs, top_k=10, epsilon=0.5)
    json.dumps(out)  # plain Python values only
    layers, model = out["layers"], out["model"]
    assert set(layers) == set(pairs)
    assert layers["layer.intruder"]["intruders"] == 1
    assert layers["layer.inside"]["intruders"] == 0
    assert layers["layer.intruder"]["rankme"] == pytest.approx(1.0, rel=1e-3)
    assert layers["layer.inside"]["subspace_overlap"] == pytest.approx(1.0, abs=1e-4)
    assert layers["layer.intruder"]["subspace_overlap"] < 0.1
    assert layers["layer.intruder"]["spectral_norm"] == pytest.approx(20.0, rel=1e-4)
    assert model["intruders"] == 1 and model["layers"] == 2
    assert list(model["intruder_curve"]) == ["0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9"]
    counts = list(model["intruder_curve"].values())
    assert counts == sorted(counts)
    assert model["intruder_curve"]["0.5"] == model["intruders"]
    assert model["spectral_norm_max"] == pytest.approx(20.0, rel=1e-4)
    f = [layers[n]["frobenius_norm"] for n in pairs]
    assert model["frobenius_norm_total"] == pytest.approx(math.hypot(*f), rel=1e-6)
    assert model["rankme_mean"] == pytest.approx((layers["layer.intruder"]["rankme"] + layers["layer.inside"]["rankme"]) / 2)


def test_rejects_non_matrices():
    with pytest.raises(ValueError):
        rankme(torch.zeros(3))
    with pytest.raises(ValueError):
        intruder_dimensions(torch.zeros(3, 4), torch.zeros(4, 3))
