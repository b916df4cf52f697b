"""RandLoRA: full-rank updates from learned scalings of shared random bases.

Albert et al. 2025, "RandLoRA: Full-rank parameter-efficient fine-tuning of
large models" (official code PaulAlbert31/RandLoRA; Hugging Face PEFT
``peft.tuners.randlora``, whose numerics we follow).

For a layer W (m x n) let d = min(m, n), D = max(m, n), N = ceil(d / r):

    frozen, shared by every layer:  A in R^{r x d} (one matrix), B_i in R^{D x r}, i = 1..N
    trainable per layer:            Lambda in R^{r x N} (init 0), Gamma in R^{N x d} (init 1 / max(N, d))
    dW (D x d) = s * sum_i B_i diag(Lambda[:, i]) A diag(Gamma[i])       (transposed when m < n)
    y = W x + s * B_flat ((Lambda . A . Gamma)_flat x)     s = alpha / r;   #P = r N + N d

``(Lambda . A . Gamma)[k, i, j] = Lambda[k, i] A[k, j] Gamma[i, j]`` is flattened
over (k, i) and ``B_flat`` over (i, k), in that order, exactly as PEFT does; the
pairing of basis rows and columns is therefore a fixed permutation of the
paper's sum, which changes nothing about what the bases span (they are i.i.d.
random). When the input has many more tokens than the update has inner
dimensions (a training batch), ``forward`` computes ``x (W + dW)^T`` instead of
routing x through the bases: 3 to 4x fewer multiply-adds
(``RandLoRAAdapter.merged_is_cheaper``). The scaled bases go through :class:`ScaledBasis`, an autograd
function that returns gradients for Lambda and Gamma only and keeps no
gradient buffer for the frozen bases (the paper's memory-saving backward).

Bases: from a CPU generator seeded with ``basis_seed`` (PEFT's
``projection_prng_key``): A (r x 1 x d) then N blocks B (D x 1 x r), each
kaiming-uniform (a = sqrt 5) in bf16, then divided by its global std; d and D
come from the largest target layer, and each layer uses the leading slices.
``bases=sparse`` / ``very_sparse`` draw PEFT's ternary {-1, 0, 1} bases
(sparsity 3, or sqrt(d)) instead. PEFT draws in bf16 where the machine
supports it and fp16 elsewhere; we always use bf16, so the bases never depend
on the machine. They are method state regenerated from the seed at every build
(non-persistent buffers, not saved): a pure function of (seed, rank, target
shapes), they would otherwise add D x d values per run to every checkpoint,
and a reload or resume reproduces them bit for bit.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from peftlab.errors import UserError
from peftlab.methods.base import Adapter, AdapterMethod, positive_int, probability, select_modules
from peftlab.methods.low_rank import sees_frozen_input
from peftlab.methods.native import NativeForm, expect_shape, json_number

BASES = ("dense", "sparse", "very_sparse")


class ScaledBasis(torch.autograd.Function):
    """``Lambda[:, :, None] * A * Gamma[None]`` with gradients for Lambda and Gamma only.

    Autograd of the plain product would keep A (and its broadcast) for a gradient
    A never needs; the explicit backward contracts the output gradient directly.
    """

    @staticmethod
    def forward(ctx: Any, basis: Tensor, lam: Tensor, gamma: Tensor) -> Tensor:
        ctx.save_for_backward(basis, lam, gamma)
        return lam[:, :, None] * basis * gamma[None]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor, Tensor]:
        basis, lam, gamma = (t.to(grad.dtype) for t in ctx.saved_tensors)
        grad_lam = torch.einsum("kij,kvj,ij->ki", grad, basis, gamma)
        grad_gamma = torch.einsum("kij,kvj,ki->ij", grad, basis, lam)
        return None, grad_lam, grad_gamma


class SharedBases(nn.Module):
    """The frozen random bases A (r x 1 x d) and B (D x N x r) every RandLoRA layer slices."""

    def __init__(self, rank: int, small: int, large: int, seed: int, kind: str = "dense"):
        super().__init__()
        self.seed, self.kind = seed, kind
        generator = torch.Generator(device="cpu").manual_seed(seed)
        count = math.ceil(small / rank)
        if kind == "dense":
            a = kaiming((rank, 1, small), generator)
            b = torch.cat([kaiming((large, 1, rank), generator) for _ in range(count)], dim=1)
        else:
            sparsity = 3 if kind == "sparse" else math.sqrt(small)
            a = ternary(torch.rand((rank, 1, small), generator=generator), sparsity)
            b = ternary(torch.rand((large, count, rank), generator=generator), sparsity)
        self.register_buffer("A", (a / a.std()).float(), persistent=False)
        self.register_buffer("B", (b / b.std()).float(), persistent=False)


def kaiming(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    return nn.init.kaiming_uniform_(torch.empty(shape, dtype=torch.bfloat16), a=math.sqrt(5), generator=generator)


def ternary(uniform: Tensor, sparsity: float) -> Tensor:
    """-1 below 1/(2 sparsity), +1 above 1 - 1/(2 sparsity), else 0 (Achlioptas' sparse projection)."""
    out = torch.zeros(uniform.shape)
    out[uniform < 1 / (2 * sparsity)] = -1
    out[uniform > 1 - 1 / (2 * sparsity)] = 1
    return out


class RandLoRAAdapter(Adapter):
    """Trainable ``randlora_lambda`` (r x N) and ``randlora_gamma`` (N x d) on the shared bases."""

    def __init__(self, in_features: int, out_features: int, rank: int, scale: float, bases: SharedBases,
                 dropout: float = 0.0):
        super().__init__(in_features, out_features)
        self.basis_rank, self.scale, self.bases = rank, scale, bases
        self.small, self.large = min(in_features, out_features), max(in_features, out_features)
        self.count = math.ceil(self.small / rank)
        self.randlora_lambda = nn.Parameter(torch.zeros(rank, self.count))
        self.randlora_gamma = nn.Parameter(torch.zeros(self.count, self.small))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def initialize(self, weight: Tensor, calibration: Tensor | None = None) -> Tensor | None:
        nn.init.zeros_(self.randlora_lambda)
        nn.init.constant_(self.randlora_gamma, 1 / max(self.randlora_gamma.shape))
        return None

    def expected_trainable(self) -> int:
        return self.count * (self.basis_rank + self.small)

    def projections(self) -> tuple[Tensor, Tensor]:
        """``(first, second)``, n -> rN -> m, with dW = s * second @ first (the scaled bases on the smaller side)."""
        dtype = self.randlora_lambda.dtype
        a = self.bases.A[:, :, : self.small].to(dtype)
        b = self.bases.B[: self.large, : self.count].to(dtype).flatten(start_dim=1)  # D x N r
        scaled = ScaledBasis.apply(a, self.randlora_lambda, self.randlora_gamma).flatten(end_dim=1)  # r N x d
        if self.small == self.in_features:
            return scaled, b
        return b.T, scaled.T

    def delta_weight(self) -> Tensor:
        first, second = self.projections()
        return self.scale * (second @ first)

    def delta_forward(self, x: Tensor) -> Tensor:
        first, second = self.projections()
        return F.linear(F.linear(self.dropout(x), first), second) * self.scale

    def forward(self, x: Tensor, base: nn.Linear) -> Tensor:
        if self.merged_is_cheaper(x, base):
            return F.linear(x, base.weight + self.delta_weight(), base.bias)
        return super().forward(x, base)

    def merged_is_cheaper(self, x: Tensor, base: nn.Linear) -> bool:
        """Whether ``x (W + dW)^T`` costs fewer multiply-adds than routing x through the bases.

        The update is full rank (k = r N ~ min(m, n) inner dimensions): through the
        bases it costs T k (m + n) per forward, and about three times that with the
        gradient; forming dW costs m k n, and with the gradient another m k n plus the
        weight gradient T m n, while the frozen matmul and dx are paid either way. For
        T >> k (a training batch of 2048 tokens on a 384-wide layer) forming dW is 3 to
        4x cheaper. It needs the layer's own input (no dropout in training), one dtype,
        no autocast and a plain frozen Linear.
        """
        if type(base).forward is not nn.Linear.forward or not sees_frozen_input(
                x, base.weight, base.bias, self.dropout, self.randlora_lambda.dtype):
            return False
        tokens, k = x.numel() // x.shape[-1], self.basis_rank * self.count
        m, n = self.out_features, self.in_features
        if torch.is_grad_enabled() and self.randlora_lambda.requires_grad:
            return 2 * m * k * n + tokens * m * n < 3 * tokens * k * (m + n)
        return m * k * n < tokens * k * (m + n)

    def peft_native(self) -> NativeForm:
        """PEFT's RandLoRA with ``save_projection``: Lambda, Gamma and the whole shared bases, which PEFT
        saves once under ``base_model.`` and once more in every layer, so a load never regenerates them."""
        bases = {"randlora_A": self.bases.A, "randlora_B": self.bases.B}
        drop = self.dropout.p if isinstance(self.dropout, nn.Dropout) else 0.0
        return NativeForm(
            peft_type="RANDLORA", kind="randlora", formula=peft_randlora_weight, shared=bases,
            tensors={"randlora_lambda": self.randlora_lambda, "randlora_gamma": self.randlora_gamma, **bases},
            config={"r": self.basis_rank, "randlora_alpha": json_number(self.scale * self.basis_rank),
                    "projection_prng_key": self.bases.seed, "save_projection": True,
                    "sparse": self.bases.kind == "sparse", "very_sparse": self.bases.kind == "very_sparse",
                    "randlora_dropout": drop, "bias": "none", "fan_in_fan_out": False, "init_weights": True})


def peft_randlora_weight(weight: Tensor, tensors: dict[str, Tensor], fields: dict[str, Any]) -> Tensor:
    """The weight PEFT's RandLoRA computes on W (peft/tuners/randlora/layer.py, ``get_delta_weight``)."""
    r, (m, n) = fields["r"], weight.shape
    small, large = min(m, n), max(m, n)
    count = math.ceil(small / r)
    lam = expect_shape(tensors, "randlora_lambda", (r, count))
    gamma = expect_shape(tensors, "randlora_gamma", (count, small))
    a, b = tensors["randlora_A"].float(), tensors["randlora_B"].float()
    if a.shape[0] != r or a.shape[2] < small or b.shape[0] < large or b.shape[1] < count or b.shape[2] != r:
        raise ValueError(f"bases of shapes {tuple(a.shape)}, {tuple(b.shape)} do not fit a {m}x{n} layer at r={r}")
    update_a = (lam[:, :, None] * a[:, :count, :small] * gamma[None]).flatten(end_dim=1)  # r N x small
    update_b = b[:large, :count].flatten(start_dim=1)  # large x N r
    delta = update_b @ update_a  # large x small
    return weight + fields["randlora_alpha"] / r * (delta if m >= n else delta.T)


class RandLoRA(AdapterMethod):
    """RandLoRA: ``rank`` r of the random bases, ``alpha`` (s = alpha / r), ``basis_seed``, ``bases``."""

    def __init__(self, rank: int = 32, alpha: float = 640, dropout: float = 0.0, basis_seed: int = 0,
                 bases: str = "dense", target_modules: Any = None, **rest: Any):
        super().__init__(target_modules=target_modules, **rest)
        # Kept as basis_rank, not rank: the change is full-rank, so export must not cap its
        # factorisation at 2 x rank (it then uses the numerical rank of the change).
        self.basis_rank = positive_int(rank, "method.rank")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
            raise UserError(f"method.alpha={alpha} is not allowed: use a number > 0")
        self.alpha = float(alpha)
        self.dropout = probability(dropout, "method.dropout")
        if isinstance(basis_seed, bool) or not isinstance(basis_seed, int) or basis_seed < 0:
            raise UserError(f"method.basis_seed={basis_seed} is not allowed: use an integer >= 0")
        self.basis_seed = basis_seed
        if bases not in BASES:
            raise UserError(f"method.bases={bases} is not allowed: use one of {', '.join(BASES)}")
        self.bases_kind = bases
        self.shared: SharedBases | None = None

    @property
    def scale(self) -> float:
        return self.alpha / self.basis_rank

    def adapt(self, model: nn.Module, *, target_defaults: Sequence[str], calibration: Any = None) -> None:
        names = select_modules(model, self.target_modules, target_defaults)
        layers = [model.get_submodule(n) for n in names]
        # Sized for the largest target in each dimension, as PEFT's _find_dim.
        out_dim = max(layer.out_features for layer in layers)
        in_dim = max(layer.in_features for layer in layers)
        small, large = min(out_dim, in_dim), max(out_dim, in_dim)
        self.shared = SharedBases(self.basis_rank, small, large, self.basis_seed, self.bases_kind)
        self.shared.to(device=layers[0].weight.device)
        super().adapt(model, target_defaults=target_defaults, calibration=calibration)

    def make_adapter(self, layer: nn.Linear, name: str) -> Adapter:
        assert self.shared is not None, "adapt() draws the shared bases first"
        return RandLoRAAdapter(layer.in_features, layer.out_features, self.basis_rank, self.scale,
                               self.shared, self.dropout)
