"""The regularizer protocol.

A regularizer receives a :class:`RegularizerContext` (the model, the method,
the batch, the outputs and, computed lazily once per micro-batch, the outputs
of the pretrained function) and returns a scalar. :func:`add_terms` adds
``weight * term`` to the loss and logs the raw term as ``reg/<name>`` and the
weighted one as ``reg/<name>/weighted``. A term of weight 0 is measured and
logged but not trained on (it runs without gradients): the control arm of a
sweep over the weight logs the quantity the other arms penalise.

A regularizer declares what it :attr:`~Regularizer.needs` from the method,
among :data:`CAPABILITIES`; a method declares what it provides
(``Method.provides``). :meth:`Regularizer.check` compares the two before any
model is built and, on a mismatch, raises a one-line ``UserError`` that names
the methods the regularizer fits (read from the method YAMLs' classes).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from peftlab.errors import UserError

#: What a regularizer may need from a method, and how an error message names it.
CAPABILITIES = {
    "reference_outputs": "the pretrained model's outputs",
    "factors": "factor matrices (B, A)",
    "weight_change": "the weight change of each adapted layer",
}


class RegularizerContext:
    """What a regularizer may look at during one micro-batch.

    ``outputs`` are what the task's loss returned (``.logits``: B x C for a
    classifier, one row per response token for a causal LM). ``kind`` is the
    task's head (``sequence_classification`` or ``causal_lm``), so a term can
    take the form its paper gives for each.
    """

    def __init__(self, model: nn.Module, method: Any, batch: dict[str, Tensor], outputs: Any, task: Any = None):
        self.model = model
        self.method = method
        self.batch = batch
        self.outputs = outputs
        self.task = task
        self.kind = str(getattr(task, "head", "") or "sequence_classification")
        self._reference_outputs = None

    @property
    def reference_outputs(self) -> Any:
        """The pretrained function's outputs on the same batch: one extra forward without gradients,
        run on the first access only, in eval mode (a deterministic teacher: no dropout)."""
        if self._reference_outputs is None:
            was_training = self.model.training
            self.model.eval()
            try:
                with torch.no_grad(), self.method.reference(self.model):
                    if self.task is not None:
                        self._reference_outputs = self.task.loss(self.model, self.batch)[1]
                    else:
                        self._reference_outputs = self.model(**self.batch)
            finally:
                self.model.train(was_training)
        return self._reference_outputs


class Regularizer:
    """Base class: ``weight * term(context)`` is added to the task loss."""

    #: What the term needs from the method (keys of :data:`CAPABILITIES`).
    needs: frozenset[str] = frozenset()

    def __init__(self, name: str, weight: float = 1.0):
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
            raise UserError(f"regularizer.{name}.weight={weight} is not allowed: use a number >= 0")
        self.name = name
        self.weight = float(weight)

    def check(self, method: Any) -> None:
        """Raise a one-line UserError when the method cannot supply what this term needs."""
        provided = frozenset(getattr(method, "provides", ()))
        missing = sorted(self.needs - provided)
        if missing:
            what = " and ".join(CAPABILITIES[m] for m in missing)
            fits = ", ".join(fitting_methods(self.needs)) or "none of the shipped methods"
            raise UserError(f"regularizer '{self.name}' needs {what}, which {type(method).__name__} does not have: "
                            f"it fits method={fits}")

    def setup(self, model: nn.Module, method: Any) -> None:
        """Called once the model is adapted, before training (e.g. to cache what the term compares to)."""

    def term(self, ctx: RegularizerContext) -> Tensor:
        raise NotImplementedError


def fitting_methods(needs: frozenset[str]) -> list[str]:
    """The shipped method options whose class provides everything in ``needs``."""
    from peftlab.config import list_option_names, load_option, locate

    names = []
    for option in list_option_names("method"):
        node = load_option("method", option)
        try:
            cls = locate(str(node["_target_"]))
        except (UserError, KeyError, TypeError):
            continue
        if needs <= frozenset(getattr(cls, "provides", ())):
            names.append(option)
    return names


def add_terms(regularizers: list[Regularizer], ctx: RegularizerContext) -> tuple[Tensor | None, dict[str, Tensor]]:
    """``(sum of weight * term, {reg/<name>: raw, reg/<name>/weighted: weighted})`` for one micro-batch."""
    total = None
    logged: dict[str, Tensor] = {}
    for reg in regularizers:
        if reg.weight > 0:
            value = reg.term(ctx)
            weighted = reg.weight * value
            total = weighted if total is None else total + weighted
        else:
            with torch.no_grad():
                value = reg.term(ctx)
            weighted = torch.zeros_like(value)
        logged[f"reg/{reg.name}"] = value.detach()
        logged[f"reg/{reg.name}/weighted"] = weighted.detach()
    return total, logged
