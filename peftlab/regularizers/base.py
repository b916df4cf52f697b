"""The regularizer protocol.

A regularizer receives a :class:`RegularizerContext` (the model, the method,
the batch, the outputs and, computed lazily once per step, the outputs of the
pretrained function) and returns a scalar. The training loop adds
``weight * term`` to the loss and logs the unweighted term as ``reg/<name>``.
A regularizer that does not fit the method raises a ``UserError`` at
:meth:`Regularizer.setup` naming the methods it fits.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from peftlab.errors import UserError


class RegularizerContext:
    """What a regularizer may look at during one training step."""

    def __init__(self, model: nn.Module, method: Any, batch: dict[str, Tensor], outputs: Any):
        self.model = model
        self.method = method
        self.batch = batch
        self.outputs = outputs
        self._reference_outputs = None

    @property
    def reference_outputs(self) -> Any:
        """Outputs of the pretrained function on the same batch (one extra forward, no grad)."""
        if self._reference_outputs is None:
            with torch.no_grad(), self.method.reference(self.model):
                self._reference_outputs = self.model(**self.batch)
        return self._reference_outputs


class Regularizer:
    """Base class: ``weight * term(context)`` is added to the task loss."""

    def __init__(self, name: str, weight: float = 1.0):
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise UserError(f"regularizer.{name}.weight={weight} is not allowed: use a number >= 0")
        self.name = name
        self.weight = float(weight)

    def setup(self, model: nn.Module, method: Any) -> None:
        """Check that this regularizer fits the method; raise UserError otherwise."""

    def term(self, ctx: RegularizerContext) -> Tensor:
        raise NotImplementedError
