"""SST, Sparse Spectral Training: train W as U diag(sigma) V^T, r sampled singular vectors at a time.

Zhao et al. 2024, "Sparse Spectral Training and Inference on Euclidean and
Hyperbolic Neural Networks". The official code could not be retrieved; this
follows the paper.

    W = U diag(sigma) V^T           (thin SVD in fp32, k = min(m, n))
    W_res = W - U diag(sigma) V^T   (frozen; zero up to float error: W is replaced)
    y = W_res x + U diag(sigma) V^T x + b;      #P = k (m + n) + k, of which r (m + n) + k move per step

Per step and layer:

* sampling: r indices without replacement, ``p(i) = 1/2 (1/k + sigma_i / sum(sigma))``;
  only those columns of U and V (and every sigma) are updated;
* enhanced gradients (a custom backward, G the gradient of the weight):
  ``grad U_i = G V_i``, ``grad V_i = G^T U_i`` (no sigma_i factor), ``grad sigma_i = U_i^T G V_i``;
* after the update the sampled U_i, V_i are renormalised to unit length, their norms folded
  into sigma_i (so the function is unchanged), and sigma is clamped at >= 0;
* every ``resvd_steps`` steps (a round), ``U diag(sigma) V^T`` is re-decomposed by SVD and the
  optimizer state of U, sigma and V is dropped: every vector is redrawn by the new SVD.

Our choices where the paper is not explicit: the unsampled columns are held in place
through the step (their optimizer moments see a zero gradient and decay, but momentum
does not move them); sampling uses the method's own generator (seeded from the run's
seed, carried in checkpoints), so every process of a run draws the same vectors.
Memory is that of full fine-tuning (U and V are full-size and have optimizer moments).
The weight change exports as an SVD-factored LoRA of the numerical rank (exact).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from peftlab.methods.base import Adapter, AdapterMethod, adapted_layers, check_rank, positive_int


class SpectralProduct(torch.autograd.Function):
    """``U diag(s) Vh`` with SST's enhanced gradients (no sigma factor on U and Vh)."""

    @staticmethod
    def forward(ctx: Any, u: Tensor, s: Tensor, vh: Tensor) -> Tensor:
        ctx.save_for_backward(u, vh)
        return (u * s) @ vh

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        u, vh = ctx.saved_tensors
        ut_g = u.T @ grad  # k x n: the rows are U_i^T G, i.e. grad V_i^T
        return grad @ vh.T, (ut_g * vh).sum(dim=1), ut_g


class SSTAdapter(Adapter):
    """The full spectrum of W as trainable U, sigma, V^T on the float residual of the SVD."""

    rewrites_base = True

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features)
        self.k = k = min(in_features, out_features)
        self.sst_U = nn.Parameter(torch.zeros(out_features, k))
        self.sst_S = nn.Parameter(torch.zeros(k))
        self.sst_Vh = nn.Parameter(torch.zeros(k, in_features))

    def initialize(self, weight: Tensor, calibration: Tensor | None = None) -> Tensor | None:
        u, sigma, vh = torch.linalg.svd(weight.float(), full_matrices=False)
        self.sst_U.data.copy_(u)
        self.sst_S.data.copy_(sigma)
        self.sst_Vh.data.copy_(vh)
        return weight.float() - (u * sigma) @ vh

    def expected_trainable(self) -> int:
        return self.k * (self.in_features + self.out_features) + self.k

    def delta_weight(self) -> Tensor:
        return (self.sst_U * self.sst_S) @ self.sst_Vh

    def delta_forward(self, x: Tensor) -> Tensor:
        return F.linear(x, SpectralProduct.apply(self.sst_U, self.sst_S, self.sst_Vh).to(x.dtype))

    def probabilities(self) -> Tensor:
        sigma = self.sst_S.detach().float().clamp(min=0)
        total = sigma.sum()
        share = sigma / total if total > 0 else torch.full_like(sigma, 1.0 / self.k)
        return 0.5 * (1.0 / self.k + share)

    @torch.no_grad()
    def renormalize(self, index: Tensor) -> None:
        """Unit-length sampled vectors, their norms folded into sigma; then sigma >= 0."""
        nu = self.sst_U[:, index].norm(dim=0)
        nv = self.sst_Vh[index].norm(dim=1)
        self.sst_U[:, index] /= nu
        self.sst_Vh[index] /= nv[:, None]
        self.sst_S[index] *= nu * nv
        self.sst_S.clamp_(min=0)

    @torch.no_grad()
    def resvd(self) -> None:
        u, sigma, vh = torch.linalg.svd(self.delta_weight().float(), full_matrices=False)
        self.sst_U.copy_(u)
        self.sst_S.copy_(sigma)
        self.sst_Vh.copy_(vh)


class SST(AdapterMethod):
    """Sparse Spectral Training (``rank`` singular vectors sampled per step, re-SVD every round)."""

    def __init__(self, rank: int = 8, resvd_steps: int = 200, target_modules: Any = None, **rest: Any):
        super().__init__(target_modules=target_modules, **rest)
        # Not named ``rank``: the weight change is not of rank 2r (export uses its numerical rank).
        self.sampled = positive_int(rank, "method.rank")
        self.resvd_steps = positive_int(resvd_steps, "method.resvd_steps")
        self.generator = torch.Generator()
        self.drawn: dict[SSTAdapter, Tensor] = {}
        self.held: dict[SSTAdapter, tuple[Tensor, Tensor]] = {}

    def make_adapter(self, layer: nn.Linear, name: str) -> Adapter:
        check_rank(self.sampled, layer, name)
        return SSTAdapter(layer.in_features, layer.out_features)

    def adapt(self, model: nn.Module, *, target_defaults: Any, calibration: Any = None) -> None:
        super().adapt(model, target_defaults=target_defaults, calibration=calibration)
        self.generator.manual_seed(int(torch.randint(0, 2**62, ())))  # from the run's seed

    def adapters(self, model: nn.Module) -> list[SSTAdapter]:
        return [layer.adapter for layer in adapted_layers(model).values() if isinstance(layer.adapter, SSTAdapter)]

    @torch.no_grad()
    def on_after_backward(self, model: nn.Module, step: int) -> None:
        """Draw this step's vectors and keep the gradient of U and V on them only."""
        self.drawn = {}
        for adapter in self.adapters(model):
            index = torch.multinomial(adapter.probabilities().cpu(), self.sampled, replacement=False,
                                      generator=self.generator).to(adapter.sst_U.device)
            self.drawn[adapter] = index
            keep = torch.zeros(adapter.k, dtype=torch.bool, device=index.device)
            keep[index] = True
            if adapter.sst_U.grad is not None:
                adapter.sst_U.grad.mul_(keep)
            if adapter.sst_Vh.grad is not None:
                adapter.sst_Vh.grad.mul_(keep[:, None])

    def on_before_optimizer_step(self, model: nn.Module, step: int, base_lr: float) -> dict[str, Tensor]:
        self.held = {a: (a.sst_U.detach().clone(), a.sst_Vh.detach().clone()) for a in self.drawn}
        return {}

    @torch.no_grad()
    def on_after_optimizer_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        for adapter, index in self.drawn.items():
            u, vh = self.held[adapter]
            keep = torch.zeros(adapter.k, dtype=torch.bool, device=index.device)
            keep[index] = True
            adapter.sst_U.copy_(torch.where(keep, adapter.sst_U, u))
            adapter.sst_Vh.copy_(torch.where(keep[:, None], adapter.sst_Vh, vh))
            adapter.renormalize(index)
        self.held, self.drawn = {}, {}
        if (step + 1) % self.resvd_steps == 0:
            for adapter in self.adapters(model):
                adapter.resvd()
                if self.optimizer is not None:
                    for p in (adapter.sst_U, adapter.sst_S, adapter.sst_Vh):
                        self.optimizer.state.pop(p, None)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"].to(torch.uint8))
