"""Spectral diagnostics of weight updates.

Pure functions of tensors: no model, no run folder. Every SVD runs in float32
on the tensor's device, exactly (``torch.linalg.svd``), since the diagnostics
compare individual singular vectors. Weights are Linear weights of shape
m x n (out x in); "left" singular vectors live in the output space.

* :func:`intruder_dimensions` - singular vectors of the fine-tuned weight that
  resemble no pretrained singular vector (Shuttleworth et al., "LoRA vs full
  fine-tuning: an illusion of equivalence").
* :func:`rankme` - effective rank of an update (Garrido et al. 2023).
* :func:`subspace_overlap` - how much of the update lies in the pretrained
  top singular subspace.
* :func:`analyze_layers` - all of the above per layer plus a model summary,
  as plain JSON-serialisable Python values (written to ``analysis.json``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor

#: The default epsilon grid of the intruder curve: 0.1, 0.2, ..., 0.9.
DEFAULT_EPSILONS: tuple[float, ...] = tuple(round(0.1 * i, 10) for i in range(1, 10))

#: Relative threshold below which a singular value counts as zero (numerical rank).
RANK_TOL = 1e-6


def _as_matrix(t: Tensor, what: str) -> Tensor:
    if not isinstance(t, Tensor):
        t = torch.as_tensor(t)
    if t.dim() != 2:
        raise ValueError(f"{what} must be a 2-D weight matrix, got shape {tuple(t.shape)}")
    return t.detach().to(torch.float32)


def _svd(w: Tensor) -> tuple[Tensor, Tensor]:
    """Left singular vectors (columns, by decreasing singular value) and singular values, float32."""
    u, s, _ = torch.linalg.svd(w, full_matrices=False)
    return u, s


def _numerical_rank(s: Tensor) -> int:
    if s.numel() == 0:
        return 0
    smax = float(s[0])
    if smax <= 0.0 or not math.isfinite(smax):
        return 0
    return int((s > RANK_TOL * smax).sum())


# ---------------------------------------------------------------- intruders ---
def _intruders_from_svd(u0: Tensor, u_ft: Tensor, top_k: int, epsilon: float) -> dict:
    k = min(int(top_k), u_ft.shape[1])
    # c_j = max_i |<U_ft[:, j], U0[:, i]>| for the top-k columns of U_ft.
    sims = (u_ft[:, :k].T @ u0).abs().amax(dim=1) if k > 0 else u_ft.new_zeros(0)
    values = [float(c) for c in sims.cpu()]
    return {"intruders": sum(1 for c in values if c < epsilon), "similarities": values}


def intruder_dimensions(w0: Tensor, w_ft: Tensor, top_k: int = 10, epsilon: float = 0.5) -> dict:
    """Count the intruder dimensions of a fine-tuned weight.

    With ``U0`` and ``U_ft`` the left singular vectors of ``w0`` and ``w_ft``
    (``w_ft = w0 + dW`` merged; float32 SVD), the similarity of fine-tuned
    singular vector j is ``c_j = max_i |U_ft[:, j] . U0[:, i]|`` (both unit
    vectors, so this is the absolute cosine). Only the ``top_k`` singular
    vectors of ``w_ft`` by singular value are checked; j is an intruder when
    ``c_j < epsilon``.

    Returns ``{"intruders": int, "similarities": [c_1, ..., c_k]}``; the
    similarities let :func:`intruder_curve` recount for any epsilon.
    """
    w0 = _as_matrix(w0, "w0")
    w_ft = _as_matrix(w_ft, "w_ft").to(w0.device)
    if w0.shape != w_ft.shape:
        raise ValueError(f"w0 {tuple(w0.shape)} and w_ft {tuple(w_ft.shape)} differ in shape")
    u0, _ = _svd(w0)
    u_ft, _ = _svd(w_ft)
    return _intruders_from_svd(u0, u_ft, top_k, epsilon)


def intruder_curve(similarities_list: Iterable[Sequence[float]], epsilons: Iterable[float]) -> list[int]:
    """Total intruder count at each epsilon, summed over matrices.

    ``similarities_list`` holds one list of ``c_j`` per matrix (the
    ``"similarities"`` of :func:`intruder_dimensions`). The count is
    non-decreasing in epsilon.
    """
    sims = [float(c) for layer in similarities_list for c in layer]
    return [sum(1 for c in sims if c < float(eps)) for eps in epsilons]


# ------------------------------------------------------------------ RankMe ---
def _rankme_from_singular_values(s: Tensor, eps: float) -> float:
    s = s.to(torch.float64)
    total = float(s.sum())
    if total <= 0.0 or not math.isfinite(total):
        return 0.0
    p = s / total + eps
    return float(torch.exp(-(p * torch.log(p)).sum()))


def rankme(delta: Tensor, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al. 2023) of a weight update: a smooth effective rank.

    With ``sigma`` the singular values of ``delta``:
    ``p_k = sigma_k / ||sigma||_1 + eps`` and ``RankMe = exp(-sum_k p_k log p_k)``.
    A rank-k update with k equal singular values scores k. A zero update
    scores 0.
    """
    d = _as_matrix(delta, "delta")
    return _rankme_from_singular_values(torch.linalg.svdvals(d), eps)


# ------------------------------------------------------------------- norms ---
def spectral_norm(delta: Tensor) -> float:
    """Largest singular value of ``delta`` (float32)."""
    d = _as_matrix(delta, "delta")
    return float(torch.linalg.matrix_norm(d, ord=2)) if d.numel() else 0.0


def frobenius_norm(delta: Tensor) -> float:
    """Frobenius norm ``sqrt(sum_ij delta_ij^2)`` of ``delta`` (float32)."""
    return float(torch.linalg.matrix_norm(_as_matrix(delta, "delta"), ord="fro"))


# --------------------------------------------------------- subspace overlap ---
def _overlap_from_svd(u0: Tensor, ud: Tensor, sd: Tensor, r: int) -> float:
    r = min(int(r), _numerical_rank(sd), u0.shape[1])
    if r <= 0:
        return 0.0
    m = u0[:, :r].T @ ud[:, :r]
    return float((m * m).sum()) / r


def subspace_overlap(w0: Tensor, delta: Tensor, r: int) -> float:
    """Overlap of the update's top-r left singular subspace with the pretrained one.

    ``overlap = ||U0_r^T Ud_r||_F^2 / r`` where ``U0_r`` holds the top-r left
    singular vectors of ``w0`` and ``Ud_r`` those of ``delta``. Both have
    orthonormal columns, so this is the mean squared cosine of the principal
    angles between the two r-dimensional subspaces: 1 when the update's
    subspace lies inside the pretrained top-r subspace, 0 when it is
    orthogonal to it, and about r/m for a random subspace of R^m.

    ``r`` is lowered to the update's numerical rank (the number of singular
    values above ``1e-6 * sigma_max``), so a rank-4 update compared with
    ``r=8`` uses r = 4. A zero update gives 0.0.
    """
    w0 = _as_matrix(w0, "w0")
    d = _as_matrix(delta, "delta").to(w0.device)
    if w0.shape != d.shape:
        raise ValueError(f"w0 {tuple(w0.shape)} and delta {tuple(d.shape)} differ in shape")
    u0, _ = _svd(w0)
    ud, sd = _svd(d)
    return _overlap_from_svd(u0, ud, sd, r)


# ----------------------------------------------------------------- driver ---
def _eps_key(eps: float) -> str:
    return f"{float(eps):g}"


def analyze_layers(
    pairs: Mapping[str, tuple[Tensor, Tensor]],
    top_k: int = 10,
    epsilon: float = 0.5,
    epsilons: Sequence[float] = DEFAULT_EPSILONS,
    overlap_rank: int | None = None,
) -> dict:
    """All diagnostics for each layer and for the model.

    ``pairs`` maps a layer name to ``(W0, dW)``: the pretrained weight and the
    (merged-equivalent) weight update, so ``W_ft = W0 + dW``. ``overlap_rank``
    is the requested r of :func:`subspace_overlap`; None uses ``top_k`` (the
    effective r is further capped by each update's numerical rank).

    Returns a JSON-serialisable dict::

        {"layers": {name: {"intruders", "similarities", "rankme", "spectral_norm",
                           "frobenius_norm", "subspace_overlap"}},
         "model": {"intruders", "intruder_curve": {"0.1": n, ...}, "rankme_mean",
                   "spectral_norm_max", "frobenius_norm_total",
                   "subspace_overlap_mean", "layers", "top_k", "epsilon"}}

    ``frobenius_norm_total`` is the norm of all updates taken together,
    ``sqrt(sum of squared per-layer norms)``.
    """
    r_req = int(top_k if overlap_rank is None else overlap_rank)
    layers: dict[str, dict] = {}
    for name, (w0, dw) in pairs.items():
        w0 = _as_matrix(w0, f"{name}: W0")
        dw = _as_matrix(dw, f"{name}: dW").to(w0.device)
        if w0.shape != dw.shape:
            raise ValueError(f"{name}: W0 {tuple(w0.shape)} and dW {tuple(dw.shape)} differ in shape")
        u0, _ = _svd(w0)
        u_ft, _ = _svd(w0 + dw)
        ud, sd = _svd(dw)
        intr = _intruders_from_svd(u0, u_ft, top_k, epsilon)
        layers[str(name)] = {
            "intruders": intr["intruders"],
            "similarities": intr["similarities"],
            "rankme": _rankme_from_singular_values(sd, 1e-7),
            "spectral_norm": float(sd[0]) if sd.numel() else 0.0,
            "frobenius_norm": float(torch.linalg.vector_norm(sd.to(torch.float64))),
            "subspace_overlap": _overlap_from_svd(u0, ud, sd, r_req),
        }
    vals = list(layers.values())
    n = len(vals)
    curve = intruder_curve([v["similarities"] for v in vals], epsilons)
    model = {
        "intruders": sum(v["intruders"] for v in vals),
        "intruder_curve": {_eps_key(e): c for e, c in zip(epsilons, curve)},
        "rankme_mean": (sum(v["rankme"] for v in vals) / n) if n else 0.0,
        "spectral_norm_max": max((v["spectral_norm"] for v in vals), default=0.0),
        "frobenius_norm_total": math.sqrt(sum(v["frobenius_norm"] ** 2 for v in vals)),
        "subspace_overlap_mean": (sum(v["subspace_overlap"] for v in vals) / n) if n else 0.0,
        "layers": n,
        "top_k": int(top_k),
        "epsilon": float(epsilon),
    }
    return {"layers": layers, "model": model}
