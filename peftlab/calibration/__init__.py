"""The calibration pass: statistics of layer inputs that data-driven methods need before training.

A method declares what it needs by returning a :class:`~.request.Request` from
``Method.calibration_request`` (a :class:`~.request.Statistic`, the layers, and
the data from its ``calibration`` option); :func:`prepare` builds the batches,
runs the pass once through the on-disk cache and returns the
:class:`~.request.Statistics` the method's ``prepare`` receives.

Modules: ``request`` (what is asked), ``data`` (the batches), ``hooks``
(forward hooks, token masks, shared inputs), ``covariance`` (CorDA's statistic,
streamed layer group by layer group), ``pca`` and ``explained_variance`` (EVA's
incremental PCA), ``cache`` (keys, lock, atomic entries), ``run`` (the pass).
"""

from __future__ import annotations

from typing import Any

from peftlab.calibration.request import CalibrationData, Request, Statistic, Statistics

__all__ = ["CalibrationData", "Request", "Statistic", "Statistics", "prepare"]


def prepare(method: Any, loaded: Any, cfg: Any, task: Any, splits: Any = None) -> Statistics | None:
    """The statistics ``method`` asks for on ``loaded.model`` (None when it asks for none)."""
    request = method.calibration_request(loaded.model, target_defaults=loaded.target_defaults)
    if request is None:
        return None
    from peftlab.calibration.data import calibration_batches
    from peftlab.calibration.run import calibrate

    batches = calibration_batches(request.data, cfg=cfg, task=task, tokenizer=loaded.tokenizer,
                                  max_length=loaded.max_length, splits=splits)
    return calibrate(loaded.model, request, batches)
