"""SaRA: sparse training of the small-magnitude ("temporarily ineffective") weights.

Hu et al. 2024, "SaRA: High-Efficient Diffusion Model Fine-tuning with
Progressive Sparse Low-Rank Adaptation" (official code sjtuplayer/SaRA,
optim/adamw.py).

    M = |W| < theta                        (boolean mask, fixed at init; theta = 2e-3)
    idx = flat indices of M (k of them),   v = W[idx]   (trainable, k values)
    W_res = W with the masked entries set to 0         (frozen)
    W' = W_res + scatter(idx, v),   y = W' x + b;      #P = k = |{|W| < theta}|
    loss += lambda_rank * ||scatter(idx, v)||_*        (one random layer with min(m, n) > 64 per forward)

The gradient of ``v`` is the full gradient gathered at the mask (autograd of the
scatter), as the official custom autograd does. ``merged_weight`` is exact: the
masked entries of the base are zero, so merge writes ``v`` and unmerge takes it out.

Progressive re-masking: after step ``progressive_iter`` the mask is recomputed
with the same theta on the updated weights. Frozen entries never change, so the
new mask is a subset of the old one: entries whose trained value reached
``|v| >= theta`` stop training, their optimizer moments are dropped (the
official code rebuilds the whole optimizer), and ``v`` keeps its size. The
still-training subset is the persistent buffer ``sara_active``.

Storage is sparse: a layer's adapter holds ``sara_indices`` (k, int64),
``sara_active`` (k, bool) and ``sara_values`` (k) and nothing of size m x n;
the initial values (k) are kept once to rebuild the residual.

Where we differ from the official code, and why:

* trainable entries start at their original values ``W[idx]``; the official
  code writes ``|W[idx]|``, which changes the model before training (a bug);
* the mask covers the weights of the targeted Linears (the architecture
  defaults, or ``target_modules``), not every tensor of the model; the
  classification head trains in full as with every adapter method;
* the layer of the nuclear-norm term is drawn from the method's own generator
  (seeded from the run's seed, carried in checkpoints), so every process of a
  run and a resumed run draw the same layer;
* re-masking drops only the moments of the re-masked values, not the head's.

Default learning rate: 5e-4, the official rule ``1e-3 exp(-350 theta)`` at the default theta = 2e-3;
it is a fixed number in the YAML, so a run with another ``method.theta`` sets ``optimizer.lr`` itself.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from peftlab.errors import UserError
from peftlab.methods.base import Adapter, AdapterMethod, adapted_layers, positive_int


class SaRAAdapter(Adapter):
    """The small-magnitude entries of W as one trainable vector; W_res keeps the rest."""

    rewrites_base = True

    def __init__(self, in_features: int, out_features: int, theta: float):
        super().__init__(in_features, out_features)
        self.theta = theta
        self.sara_values = nn.Parameter(torch.zeros(0))
        self.register_buffer("sara_indices", torch.zeros(0, dtype=torch.long))
        self.register_buffer("sara_active", torch.zeros(0, dtype=torch.bool))

    def initialize(self, weight: Tensor, calibration: Tensor | None = None) -> Tensor | None:
        flat = weight.detach().reshape(-1)
        idx = torch.nonzero(flat.abs() < self.theta).reshape(-1)
        self.sara_indices = idx
        self.sara_active = torch.ones(idx.numel(), dtype=torch.bool, device=flat.device)
        self.sara_values = nn.Parameter(flat[idx].clone())
        return flat.index_fill(0, idx, 0).view_as(weight)

    def expected_trainable(self) -> int:
        return self.sara_indices.numel()

    def delta_weight(self) -> Tensor:
        zeros = self.sara_values.new_zeros(self.out_features * self.in_features)
        return zeros.index_put((self.sara_indices,), self.sara_values).view(self.out_features, self.in_features)

    def forward(self, x: Tensor, base: nn.Linear) -> Tensor:
        # One matmul with W' (the base is zero at the mask, so put == add); grads reach v only at idx.
        flat = base.weight.reshape(-1).index_put((self.sara_indices,), self.sara_values.to(base.weight.dtype))
        return F.linear(x, flat.view_as(base.weight), base.bias)

    @torch.no_grad()
    def remask(self) -> int:
        """Stop training the entries that grew to ``|v| >= theta``; returns how many still train."""
        self.sara_active &= self.sara_values.abs() < self.theta
        return int(self.sara_active.sum())


class SaRA(AdapterMethod):
    """SaRA: small-magnitude mask, nuclear-norm term, progressive re-masking."""

    def __init__(self, theta: float = 2e-3, lambda_rank: float = 5e-4, nuclear_min_dim: int = 64,
                 progressive_iter: int | None = 2500, target_modules: Any = None, **rest: Any):
        super().__init__(target_modules=target_modules, **rest)
        if isinstance(theta, bool) or not isinstance(theta, (int, float)) or theta <= 0:
            raise UserError(f"method.theta={theta} is not allowed: use a magnitude threshold > 0 (e.g. 2e-3)")
        if isinstance(lambda_rank, bool) or not isinstance(lambda_rank, (int, float)) or lambda_rank < 0:
            raise UserError(f"method.lambda_rank={lambda_rank} is not allowed: use a number >= 0 (0 turns it off)")
        self.theta, self.lambda_rank = float(theta), float(lambda_rank)
        self.nuclear_min_dim = positive_int(nuclear_min_dim, "method.nuclear_min_dim")
        self.progressive_iter = None if progressive_iter is None else positive_int(progressive_iter,
                                                                                 "method.progressive_iter")
        self.generator = torch.Generator()
        self.held: dict[SaRAAdapter, Tensor] = {}

    def make_adapter(self, layer: nn.Linear, name: str) -> Adapter:
        return SaRAAdapter(layer.in_features, layer.out_features, self.theta)

    def adapt(self, model: nn.Module, *, target_defaults: Any, calibration: Any = None) -> None:
        super().adapt(model, target_defaults=target_defaults, calibration=calibration)
        for name, layer in adapted_layers(model).items():
            if layer.adapter.sara_indices.numel() == 0:
                raise UserError(f"method.theta={self.theta} selects no weight of layer '{name}' (no |W| < theta): "
                                f"raise method.theta or exclude the layer with method.target_modules")
        self.generator.manual_seed(int(torch.randint(0, 2**62, ())))  # from the run's seed

    def adapters(self, model: nn.Module) -> list[SaRAAdapter]:
        return [layer.adapter for layer in adapted_layers(model).values() if isinstance(layer.adapter, SaRAAdapter)]

    def loss_terms(self, model: nn.Module) -> dict[str, Tensor]:
        """``lambda_rank * ||W ⊙ M||_*`` of one random layer with min(m, n) > nuclear_min_dim."""
        if self.lambda_rank == 0:
            return {}
        big = [a for a in self.adapters(model) if min(a.in_features, a.out_features) > self.nuclear_min_dim]
        if not big:
            return {}
        chosen = big[int(torch.randint(len(big), (), generator=self.generator))]
        return {"sara_nuclear": self.lambda_rank * torch.linalg.matrix_norm(chosen.delta_weight().float(), "nuc")}

    def on_after_backward(self, model: nn.Module, step: int) -> None:
        for adapter in self.adapters(model):
            if adapter.sara_values.grad is not None and not adapter.sara_active.all():
                adapter.sara_values.grad.mul_(adapter.sara_active)

    def on_before_optimizer_step(self, model: nn.Module, step: int, base_lr: float) -> dict[str, Tensor]:
        # Re-masked entries get no gradient, but decoupled weight decay would still move them: hold them.
        self.held = {a: a.sara_values.detach().clone() for a in self.adapters(model) if not a.sara_active.all()}
        return {}

    @torch.no_grad()
    def on_after_optimizer_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        for adapter, held in self.held.items():
            adapter.sara_values.copy_(torch.where(adapter.sara_active, adapter.sara_values, held))
        self.held = {}
        if self.progressive_iter is not None and step + 1 == self.progressive_iter:
            for adapter in self.adapters(model):
                adapter.remask()
                if self.optimizer is not None:
                    self.optimizer.state.pop(adapter.sara_values, None)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"].to(torch.uint8))
