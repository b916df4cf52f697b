"""Full fine-tuning: every weight of the model is trainable.

The reference point for every adapter method (#P = m n + m per Linear, plus
everything else). Its ``reference()`` restores the pretrained weights, which
are kept as the method's initial snapshot.
"""

from __future__ import annotations

from typing import Any, Sequence

from torch import nn

from peftlab.methods.base import Method


class FullFineTuning(Method):
    """Train all parameters."""

    def adapt(self, model: nn.Module, *, target_defaults: Sequence[str] = (), calibration: Any = None) -> None:
        for p in model.parameters():
            p.requires_grad_(True)
