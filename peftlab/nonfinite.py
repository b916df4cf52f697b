"""A run whose numbers stop being finite is failed, never a result.

Policy ``fail`` (the default) watches the loss without a host synchronisation
per step: the first step whose loss is NaN or infinite is recorded on the
device and looked at only where the loop synchronises anyway (logging,
evaluation, checkpoints, the end), always before a checkpoint is written, so
every checkpoint on disk is finite and the last one stays resumable.

Policy ``skip`` drops the update of a step whose loss or gradient norm is not
finite (the parameters and optimizer state stay as they were) and goes on; it
reads one flag per step, which costs a synchronisation on an accelerator. More
than ``max_consecutive_skips`` skipped steps in a row fail the run: the
parameters themselves have diverged.
"""

from __future__ import annotations

import math

import torch

POLICIES = ("fail", "skip")


class NonFinite(Exception):
    """The run produced a non-finite number; the message says where and what to try."""


class Guard:
    def __init__(self, policy: str, max_consecutive_skips: int, device: torch.device):
        self.policy = policy
        self.max_consecutive = max_consecutive_skips
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.skipped = 0
        self.consecutive = 0

    def observe(self, step: int, loss: torch.Tensor) -> None:
        """Remember ``step`` if its loss is not finite (device-side, no synchronisation)."""
        bad = ~torch.isfinite(loss.detach())
        self.first_bad = torch.where((self.first_bad < 0) & bad, torch.full_like(self.first_bad, step), self.first_bad)

    def skip_update(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor | None) -> bool:
        """Policy ``skip``: whether this step's update must be dropped (one flag read per step)."""
        if self.policy != "skip":
            return False
        finite = torch.isfinite(loss.detach())
        if grad_norm is not None:
            finite = finite & torch.isfinite(grad_norm.detach())
        if bool(finite):
            self.consecutive = 0
            return False
        self.skipped += 1
        self.consecutive += 1
        if self.consecutive > self.max_consecutive:
            raise NonFinite(
                f"the loss was not finite for {self.consecutive} steps in a row (last: step {step}), "
                f"so the parameters have diverged: lower optimizer.lr"
            )
        return True

    def check(self, total_steps: int) -> None:
        """Policy ``fail``: raise if a step's loss was not finite (one synchronisation)."""
        if self.policy == "fail":
            bad = int(self.first_bad)
            if bad >= 0:
                raise NonFinite(
                    f"the loss became non-finite (NaN or inf) at step {bad} of {total_steps}: lower optimizer.lr, "
                    f"or set trainer.nonfinite=skip to drop such steps"
                )

    @staticmethod
    def check_parameters(parameters: list, step: int, total_steps: int) -> None:
        """The trained parameters must be finite before they are kept: an update can overflow them
        while the loss that produced it was still finite (one synchronisation, at checkpoints)."""
        if parameters and not bool(torch.stack([torch.isfinite(p).all() for p in parameters]).all()):
            raise NonFinite(
                f"the parameters became non-finite (NaN or inf) at step {step} of {total_steps}: "
                f"lower optimizer.lr, or set trainer.nonfinite=skip to drop such steps"
            )

    @staticmethod
    def check_metrics(metrics: dict, split: str, step: int) -> None:
        """Evaluation numbers must be finite too (weights can diverge while the training loss looks fine)."""
        value = metrics.get("loss")
        measured = metrics.get("examples") or metrics.get("tokens")  # an empty split's loss is NaN by definition
        if measured and isinstance(value, float) and not math.isfinite(value):
            raise NonFinite(f"the {split} loss is {value} at step {step}: the parameters have diverged; "
                            f"lower optimizer.lr")

    def state(self) -> dict:
        return {"skipped_steps": self.skipped, "consecutive_skips": self.consecutive}

    def load_state(self, state: dict) -> None:
        self.skipped = int(state.get("skipped_steps", 0))
        self.consecutive = int(state.get("consecutive_skips", 0))
