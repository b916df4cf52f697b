"""LoRA-Pro: LoRA whose factor gradients are adjusted so that the low-rank update
follows full fine-tuning's Adam update as closely as a rank-r change can.

Wang et al. 2024, "LoRA-Pro: Are Low-Rank Adapters Properly Optimized?"
(official code mrflogs/LoRA-Pro, inside DeepSpeed ``lorapro_full_adjustment``).

The model is plain LoRA (``y = W x + s B A x``). Per optimizer step and (A, B) pair,
with ``g_A = s B^T G`` and ``g_B = s G A^T`` the autograd gradients (G the full gradient),
``P_A = pinv(A A^T + 1e-8 I)``, ``P_B = pinv(B^T B + 1e-8 I)``:

    1. t = 0 (B = 0):  gh_A = g_A,                gh_B = s^-2 g_B P_A
       otherwise:      gh_A = s^-2 P_B g_A,       gh_B = s^-2 (I - B P_B B^T) g_B P_A
       equivalent full gradient  g~ = s B gh_A + s gh_B A                 (m x n)
    2. full-size Adam on g~:  M, V (m x n), g* = (M / (1 - b1^t)) / (sqrt(V / (1 - b2^t)) + eps)
    3. pull back:             g'_A = s B^T g*,  g'_B = s g* A^T
    4. t = 0:  D_A = g'_A,  D_B = s^-2 g'_B P_A
       otherwise solve (B^T B) X + X (A A^T) = -s^-2 P_B g'_A A^T   (eigen-decompositions, fp32)
               D_A = s^-2 P_B g'_A + X A,   D_B = s^-2 (I - B P_B B^T) g'_B P_A - B X
    5. plain SGD:  A -= lr D_A,  B -= lr D_B   (lr the scheduled rate of their group)

How the loop runs it: steps 1-4 run in ``on_after_backward`` and replace the
factor gradients by D_A, D_B. Clipping then scales the adjusted gradients by
``min(1, max_grad_norm / ||raw gradients||)``, the norm measured before the
adjustment (``clips_by_raw_gradient_norm``), as the official code's DeepSpeed step
does: it computes the global norm first, adjusts, then unscales and clips with
that norm. The adjusted gradients are orders of magnitude larger than the raw
ones (they carry an Adam-normalised full-size step), so clipping them by their
own norm would shrink every update to nothing. Step 5 runs in ``on_before_optimizer_step``: the factors are moved by SGD
and their gradients set to None, so the configured optimizer (which still
updates the classification head) skips them and nothing is updated twice.
M, V and t live in the optimizer's state of A (``optimizer.state[A]``, keys
``lora_pro_exp_avg``, ``lora_pro_exp_avg_sq``, ``step``), so they are
checkpointed with it and never saved with the adapter; the moments are committed only when the step is
taken (a step dropped by ``trainer.nonfinite=skip`` leaves them unchanged).

Where we differ from the official code, and why:

* s is the adapter's true scale (alpha / r, or alpha / sqrt(r) with rslora);
  the official code hard-codes s = 2 (16 / 8), even for its rsLoRA variant;
* V is kept in fp32 (the official code accumulates it in bf16);
* SGD weight decay is the configured ``optimizer.weight_decay`` (coupled, as
  ``torch.optim.SGD``); betas and eps come from ``optimizer.betas`` / ``eps``
  when the configured optimizer has them.

Memory: two m x n moments per adapted layer (``memory_bytes``), plus one m x n
gradient per layer while a step is in flight. Merge, export and #P are LoRA's.
fp16 mixed precision is refused (``supports_fp16``): the adjustment and the fp32 moments would
meet loss-scaled gradients.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from peftlab.methods.base import adapted_layers
from peftlab.methods.lora import LoRA, LoRAAdapter

EPS_PINV = 1e-8


def solve_sylvester(p: Tensor, q: Tensor, c: Tensor) -> Tensor:
    """X with ``p X + X q = c`` for symmetric p, q (eigen-decompositions, as the official solver)."""
    lp, up = torch.linalg.eigh(p)
    lq, uq = torch.linalg.eigh(q)
    return up @ ((up.T @ c @ uq) / (lp[:, None] + lq[None, :])) @ uq.T


def low_rank_gradients(a: Tensor, b: Tensor, g_a: Tensor, g_b: Tensor, s: float, first: bool) -> tuple[Tensor, Tensor]:
    """Step 1's (gh_A, gh_B): the factor gradients whose low-rank update best matches the full gradient."""
    r = a.shape[0]
    eye = torch.eye(r, dtype=a.dtype, device=a.device)
    p_a = torch.linalg.pinv(a @ a.T + EPS_PINV * eye)
    if first:
        return g_a, g_b @ p_a / s**2
    p_b = torch.linalg.pinv(b.T @ b + EPS_PINV * eye)
    return p_b @ g_a / s**2, (g_b - b @ (p_b @ (b.T @ g_b))) @ p_a / s**2


def adjusted_gradients(a: Tensor, b: Tensor, g_a: Tensor, g_b: Tensor, s: float, first: bool) -> tuple[Tensor, Tensor]:
    """Step 4's (D_A, D_B) from the pulled-back gradients g'_A, g'_B: step 1's projection of them,
    plus the Sylvester correction ``(X A, -B X)`` after the first step."""
    d_a, d_b = low_rank_gradients(a, b, g_a, g_b, s, first)
    if first:
        return d_a, d_b
    r = a.shape[0]
    p_b = torch.linalg.pinv(b.T @ b + EPS_PINV * torch.eye(r, dtype=a.dtype, device=a.device))
    x = solve_sylvester(b.T @ b, a @ a.T, -(p_b @ g_a @ a.T) / s**2)
    return d_a + x @ a, d_b - b @ x


def adam_moments(m: Tensor, v: Tensor, g: Tensor, b1: float, b2: float) -> tuple[Tensor, Tensor]:
    """The next first and second moments (one function: the commit recomputes them bit for bit)."""
    return m * b1 + g * (1 - b1), v * b2 + g * g * (1 - b2)


class LoRAPro(LoRA):
    """LoRA with the LoRA-Pro gradient adjustment, full-size Adam on the equivalent gradient and SGD."""

    clips_by_raw_gradient_norm = True
    supports_fp16 = False

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.pending: dict[LoRAAdapter, Tensor] = {}

    def pairs(self, model: nn.Module) -> list[LoRAAdapter]:
        return [layer.adapter for layer in adapted_layers(model).values() if isinstance(layer.adapter, LoRAAdapter)]

    def group_of(self, param: Tensor) -> dict[str, Any]:
        if self.optimizer is None:
            raise RuntimeError("LoRA-Pro needs the optimizer: the training loop passes it to on_train_begin() first")
        return next(g for g in self.optimizer.param_groups if any(p is param for p in g["params"]))

    def memory_bytes(self, model: nn.Module) -> dict[str, int]:
        return {"lora_pro_moments": sum(2 * a.out_features * a.in_features * 4 for a in self.pairs(model))}

    @torch.no_grad()
    def on_after_backward(self, model: nn.Module, step: int) -> None:
        self.pending = {}
        for adapter in self.pairs(model):
            a_param, b_param = adapter.lora_A, adapter.lora_B
            if a_param.grad is None or b_param.grad is None:
                continue
            group = self.group_of(a_param)
            b1, b2 = group.get("betas", (0.9, 0.999))
            eps = group.get("eps", 1e-8)
            state = self.optimizer.state[a_param]
            t = int(state.get("step", 0))
            a, b, s = a_param.float(), b_param.float(), float(adapter.scale)
            gh_a, gh_b = low_rank_gradients(a, b, a_param.grad.float(), b_param.grad.float(), s, t == 0)
            full = s * (b @ gh_a) + s * (gh_b @ a)
            zeros = torch.zeros_like(full)
            m, v = adam_moments(state.get("lora_pro_exp_avg", zeros), state.get("lora_pro_exp_avg_sq", zeros),
                                full, b1, b2)
            g_star = (m / (1 - b1 ** (t + 1))) / ((v / (1 - b2 ** (t + 1))).sqrt() + eps)
            d_a, d_b = adjusted_gradients(a, b, s * (b.T @ g_star), s * (g_star @ a.T), s, t == 0)
            a_param.grad.copy_(d_a)
            b_param.grad.copy_(d_b)
            self.pending[adapter] = full

    @torch.no_grad()
    def on_before_optimizer_step(self, model: nn.Module, step: int, base_lr: float) -> dict[str, Tensor]:
        for adapter, full in self.pending.items():
            group = self.group_of(adapter.lora_A)
            b1, b2 = group.get("betas", (0.9, 0.999))
            state = self.optimizer.state[adapter.lora_A]
            zeros = torch.zeros_like(full)
            m, v = adam_moments(state.get("lora_pro_exp_avg", zeros), state.get("lora_pro_exp_avg_sq", zeros),
                                full, b1, b2)
            state["lora_pro_exp_avg"], state["lora_pro_exp_avg_sq"] = m, v
            # "step" as a float tensor, the form torch's Adam(W) expects when it reloads any state.
            state["step"] = torch.tensor(float(state.get("step", 0)) + 1)
            lr, decay = group["lr"], group.get("weight_decay", 0.0)
            for p in (adapter.lora_A, adapter.lora_B):
                update = p.grad + decay * p if decay else p.grad
                p.add_(update, alpha=-lr)
                p.grad = None  # the configured optimizer skips it: no second update
        self.pending = {}
        return {}
