"""AdaLoRA: adaptive budget allocation of SVD-shaped low-rank updates.

Zhang et al. 2023, "AdaLoRA: Adaptive Budget Allocation for Parameter-Efficient
Fine-Tuning" (official code QingruZhang/AdaLoRA, loralib/adalora.py; the
allocator follows PEFT's ``RankAllocator`` / ``AdaLoraModel.update_and_allocate``
step for step, so the same gradients give the same masks).

    y = W x + s * P (Lambda . Q) dropout(x),    s = alpha / (r0 + 1e-5)   (alpha <= 0: alpha = r0)
    P = lora_B (m x r0) ~ N(0, 0.02),  Lambda = lora_E (r0 x 1) = 0,  Q = lora_A (r0 x n) ~ N(0, 0.02)
    merge: W + s P (Lambda . Q);        #P = r0 (m + n) + r0

Orthogonality regulariser (a loss term, logged as reg/adalora_ortho; not squared):

    R = ortho_weight * mean over every P and Q of ||Q Q^T - I||_F and ||P^T P - I||_F

Importance, after each optimizer step (gradients still present), for every entry w of P, Lambda, Q:

    I = |w * grad w|,  Ibar <- beta1 Ibar + (1 - beta1) I,  Ubar <- beta2 Ubar + (1 - beta2) |I - Ibar|
    s(w) = Ibar * Ubar;   triplet score S_i = s(lambda_i) + mean_j s(Q_ij) + mean_j s(P_ji)

Budget (total rank over all matrices), t the 0-based optimizer step, T the run's steps:

    t <= t_i                 b0 = r0 * #matrices, no masking
    t_i < t <  T - t_f       b(t) = int(b_T + (b0 - b_T) (1 - (t - t_i) / (T - t_i - t_f))^3),
                             the (b0 - b) lowest-scoring lambda_i set to 0 when t % delta_t == 0
    t == T - t_f             the final mask at b_T = target_rank * #matrices; the importance EMAs stop
    t >  T - t_f             the same triplets are zeroed after every step

Between two maskings a zeroed lambda_i keeps training and may come back (as in
both official codes). ``t_init`` / ``t_final`` are a fraction of the run's steps
(a float in [0, 1), floored: t_i = floor(t_init T)) or a number of steps (an
integer); the fractions keep the three phases in runs of any length, the
integers reproduce the README's absolute schedules.

Where peftlab differs: ortho_weight defaults to 0.1 as in the original repo
(PEFT uses 0.5); the allocator is driven by the training loop through the
method hooks (PEFT leaves ``update_and_allocate`` to the user); a budget equal
to the initial rank masks nothing (PEFT's ``kthvalue`` would fail on k = 0);
the masking threshold stays on the device (no host synchronisation). The
rank each matrix ends with is the number of triplets its last mask kept
(:meth:`AdaLoRA.final_ranks`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from peftlab.errors import UserError
from peftlab.methods.base import (Adapter, AdapterMethod, adapted_layers, check_rank, factor_gram_distances,
                                  positive_int, probability)
from peftlab.methods.low_rank import lora_linear

#: The trainable tensors of a triplet set, in PEFT's names: Q, P, Lambda.
FACTORS = ("lora_A", "lora_B", "lora_E")


class AdaLoRAAdapter(Adapter):
    """``s * P (Lambda . Q)``; parameter names and shapes match PEFT's SVDLinear (lora_A, lora_B, lora_E)."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__(in_features, out_features)
        self.rank = rank
        self.scale = (alpha if alpha > 0 else float(rank)) / (rank + 1e-5)
        self.lora_A = nn.Parameter(torch.zeros(rank, in_features))
        self.lora_E = nn.Parameter(torch.zeros(rank, 1))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def initialize(self, weight: Tensor, calibration: Tensor | None = None) -> Tensor | None:
        nn.init.zeros_(self.lora_E)
        nn.init.normal_(self.lora_A, mean=0.0, std=0.02)
        nn.init.normal_(self.lora_B, mean=0.0, std=0.02)
        return None

    def expected_trainable(self) -> int:
        return self.rank * (self.in_features + self.out_features) + self.rank

    def delta_weight(self) -> Tensor:
        return self.scale * (self.lora_B @ (self.lora_A * self.lora_E))

    def delta_forward(self, x: Tensor) -> Tensor:
        # r0-wide path: (Lambda . Q) x, then P; the m x n update is never built.
        return F.linear(F.linear(self.dropout(x), self.lora_A * self.lora_E), self.lora_B) * self.scale

    def forward(self, x: Tensor, base: nn.Linear) -> Tensor:
        # base(x) + delta_forward(x) through the fused low-rank node, Lambda folded into Q
        return lora_linear(x, base, self.lora_A * self.lora_E, self.lora_B, self.scale, self.dropout)

    def change_rank_bound(self) -> int:
        return self.rank  # P (Lambda . Q) starts at 0 (Lambda = 0): rank <= r0

    def factors(self) -> tuple[Tensor, Tensor]:
        """``(P, Q)``: the factor matrices, so factor regularizers (orthonormal, orthogonal) fit AdaLoRA too."""
        return self.lora_B, self.lora_A

    def orthogonality(self) -> tuple[Tensor, Tensor]:
        """``(||Q Q^T - I||_F, ||P^T P - I||_F)`` in fp32, differentiable."""
        return factor_gram_distances(self.lora_B, self.lora_A)


def phase_length(value: Any, option: str) -> int | float:
    """A phase length as given: a fraction of the run (float in [0, 1)) or a number of steps (int >= 0)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{option}={value} is not allowed: use a fraction of the run in [0, 1) or a whole number of steps")
    if isinstance(value, int):
        if value < 0:
            raise UserError(f"{option}={value} is not allowed: use a number of steps >= 0 or a fraction in [0, 1)")
        return value
    if not 0 <= value < 1:
        raise UserError(f"{option}={value} is not allowed: a fraction of the run must be in [0, 1) "
                        f"(write a whole number, e.g. {option}={int(value)}, for a number of steps)")
    return float(value)


def steps_of(value: int | float, total: int) -> int:
    """The phase length in steps: integers as they are, fractions floored."""
    return value if isinstance(value, int) else int(math.floor(value * total))


def budget_at(step: int, total: int, t_init: int, t_final: int, initial: int, target: int,
              delta_t: int) -> tuple[int, bool]:
    """``(budget b(t), mask at t?)`` of the cubic schedule (PEFT's ``RankAllocator.budget_schedule``)."""
    if step <= t_init:
        return initial, False
    if step > total - t_final:
        return target, True
    remaining = 1 - (step - t_init) / (total - t_final - t_init)
    return int((initial - target) * (remaining**3) + target), step % delta_t == 0


class AdaLoRA(AdapterMethod):
    """AdaLoRA: P Lambda Q adapters whose triplets are pruned to a budget while training."""

    provides = AdapterMethod.provides | {"factors"}

    def __init__(self, rank: int = 12, target_rank: int = 8, alpha: float = 16, dropout: float = 0.0,
                 t_init: int | float = 0.1, t_final: int | float = 0.3, delta_t: int = 10,
                 beta1: float = 0.85, beta2: float = 0.85, ortho_weight: float = 0.1,
                 target_modules: Any = None, **rest: Any):
        super().__init__(target_modules=target_modules, **rest)
        self.rank = positive_int(rank, "method.rank")
        self.target_rank = positive_int(target_rank, "method.target_rank")
        if self.target_rank > self.rank:
            raise UserError(f"method.target_rank={target_rank} is larger than the initial rank method.rank={rank}: "
                            f"use method.target_rank <= {rank}, or raise method.rank")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
            raise UserError(f"method.alpha={alpha} is not allowed: use a number (<= 0 means alpha = method.rank)")
        self.alpha = float(alpha)
        self.dropout = probability(dropout, "method.dropout")
        self.t_init = phase_length(t_init, "method.t_init")
        self.t_final = phase_length(t_final, "method.t_final")
        if isinstance(self.t_init, float) and isinstance(self.t_final, float) and self.t_init + self.t_final >= 1:
            raise UserError(f"method.t_init={t_init} + method.t_final={t_final} leave no steps to allocate ranks in: "
                            f"make their sum < 1")
        self.delta_t = positive_int(delta_t, "method.delta_t")
        for value, option in ((beta1, "method.beta1"), (beta2, "method.beta2")):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
                raise UserError(f"{option}={value} is not allowed: use a number in (0, 1)")
        self.beta1, self.beta2 = float(beta1), float(beta2)
        if isinstance(ortho_weight, bool) or not isinstance(ortho_weight, (int, float)) or ortho_weight < 0:
            raise UserError(f"method.ortho_weight={ortho_weight} is not allowed: use a number >= 0 (0 turns it off)")
        self.ortho_weight = float(ortho_weight)
        self.sensitivity: dict[str, Tensor] = {}  # Ibar per "<layer>.<factor>"
        self.uncertainty: dict[str, Tensor] = {}  # Ubar per "<layer>.<factor>"
        self.masks: dict[str, Tensor] = {}  # per layer: True where the last masking kept the triplet

    def make_adapter(self, layer: nn.Linear, name: str) -> Adapter:
        check_rank(self.rank, layer, name)
        return AdaLoRAAdapter(layer.in_features, layer.out_features, self.rank, self.alpha, self.dropout)

    @staticmethod
    def adapters(model: nn.Module) -> dict[str, AdaLoRAAdapter]:
        return {n: layer.adapter for n, layer in adapted_layers(model).items()
                if isinstance(layer.adapter, AdaLoRAAdapter)}

    # -- schedule ----------------------------------------------------------------
    def phases(self, total_steps: int) -> tuple[int, int]:
        """``(t_i, t_f)`` in steps for a run of ``total_steps``; a UserError when no step is left to allocate in."""
        t_init, t_final = steps_of(self.t_init, total_steps), steps_of(self.t_final, total_steps)
        if t_init >= total_steps - t_final:
            raise UserError(f"method.t_init={self.t_init} and method.t_final={self.t_final} are {t_init} + {t_final} "
                            f"steps, which leave no steps to allocate ranks in a run of trainer.max_steps="
                            f"{total_steps}: lower them (fractions such as 0.1 and 0.3 fit any run length)")
        return t_init, t_final

    def on_train_begin(self, model: nn.Module, **loop: Any) -> None:
        super().on_train_begin(model, **loop)
        if self.total_steps > 0:  # a schedule that does not fit the run fails before any step
            self.phases(self.total_steps)

    # -- training hooks ----------------------------------------------------------
    def loss_terms(self, model: nn.Module) -> dict[str, Tensor]:
        if self.ortho_weight == 0:
            return {}
        norms = [n for adapter in self.adapters(model).values() for n in adapter.orthogonality()]
        return {"adalora_ortho": self.ortho_weight * torch.stack(norms).mean()} if norms else {}

    def on_after_optimizer_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        adapters = self.adapters(model)
        if not adapters:
            return
        t_init, t_final = self.phases(total_steps)
        initial, target = self.rank * len(adapters), self.target_rank * len(adapters)
        start_final = total_steps - t_final
        if step < start_final:
            self.update_importance(adapters)
            budget, mask_now = budget_at(step, total_steps, t_init, t_final, initial, target, self.delta_t)
            if mask_now:
                self.mask_to_budget(adapters, initial - budget)
        elif step == start_final:
            self.mask_to_budget(adapters, initial - target)
            self.sensitivity, self.uncertainty = {}, {}
        else:
            self.apply_masks(adapters)

    @torch.no_grad()
    def update_importance(self, adapters: dict[str, AdaLoRAAdapter]) -> None:
        """One step of the sensitivity (Ibar) and uncertainty (Ubar) EMAs of every entry of P, Lambda, Q."""
        for name, adapter in adapters.items():
            for factor in FACTORS:
                p = getattr(adapter, factor)
                key = f"{name}.{factor}"
                grad = p.grad if p.grad is not None else torch.zeros_like(p)
                ipt = (p * grad).abs().detach()
                sens = self.sensitivity.get(key)
                unc = self.uncertainty.get(key)
                sens = torch.zeros_like(p) if sens is None else sens.to(p.device)
                unc = torch.zeros_like(p) if unc is None else unc.to(p.device)
                sens = self.beta1 * sens + (1 - self.beta1) * ipt
                self.uncertainty[key] = self.beta2 * unc + (1 - self.beta2) * (ipt - sens).abs()
                self.sensitivity[key] = sens

    def _score(self, key: str, like: Tensor) -> Tensor:
        sens, unc = self.sensitivity.get(key), self.uncertainty.get(key)
        if sens is None or unc is None:
            return torch.zeros_like(like)
        return sens.to(like.device) * unc.to(like.device)

    def triplet_scores(self, adapters: dict[str, AdaLoRAAdapter]) -> dict[str, Tensor]:
        """``S_i = s(lambda_i) + (mean_j s(Q_ij) + mean_j s(P_ji))`` per layer (r0 values each)."""
        scores = {}
        for name, adapter in adapters.items():
            q = self._score(f"{name}.lora_A", adapter.lora_A).mean(dim=1)
            p = self._score(f"{name}.lora_B", adapter.lora_B).mean(dim=0)
            e = self._score(f"{name}.lora_E", adapter.lora_E).view(-1)
            scores[name] = e + (q + p)
        return scores

    @torch.no_grad()
    def mask_to_budget(self, adapters: dict[str, AdaLoRAAdapter], to_mask: int) -> None:
        """Zero the ``to_mask`` lowest-scoring lambda_i over all matrices (ties at the threshold go too)."""
        scores = self.triplet_scores(adapters)
        if to_mask <= 0:
            self.masks = {name: torch.ones_like(s, dtype=torch.bool) for name, s in scores.items()}
            return
        device = next(iter(adapters.values())).lora_E.device
        threshold = torch.kthvalue(torch.cat([s.to(device) for s in scores.values()]), k=to_mask)[0]
        self.masks = {}
        for name, adapter in adapters.items():
            dropped = scores[name] <= threshold.to(scores[name].device)
            adapter.lora_E.masked_fill_(dropped.view(-1, 1), 0.0)
            self.masks[name] = ~dropped

    @torch.no_grad()
    def apply_masks(self, adapters: dict[str, AdaLoRAAdapter]) -> None:
        """Zero again the triplets the final mask dropped (the final phase)."""
        for name, keep in self.masks.items():
            if name in adapters:
                lam = adapters[name].lora_E
                lam.masked_fill_(~keep.to(lam.device).view(-1, 1), 0.0)

    # -- results and state -------------------------------------------------------
    def final_ranks(self, model: nn.Module) -> dict[str, int]:
        """Triplets each matrix keeps under its last mask (r0 where no masking happened yet)."""
        return {name: int(self.masks[name].sum()) if name in self.masks else adapter.rank
                for name, adapter in self.adapters(model).items()}

    def state_dict(self) -> dict[str, Any]:
        state = {f"sensitivity.{k}": v for k, v in self.sensitivity.items()}
        state.update({f"uncertainty.{k}": v for k, v in self.uncertainty.items()})
        state.update({f"mask.{k}": v for k, v in self.masks.items()})
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        parts: dict[str, dict[str, Tensor]] = {"sensitivity": {}, "uncertainty": {}, "mask": {}}
        for key, value in state.items():
            kind, _, name = key.partition(".")
            if kind in parts:
                parts[kind][name] = value.clone()
        self.sensitivity, self.uncertainty = parts["sensitivity"], parts["uncertainty"]
        self.masks = {k: v.bool() for k, v in parts["mask"].items()}
