"""What a method asks of the calibration pass: which statistic, of which layers, on which data.

A method that needs statistics of its layer inputs before it adapts a model
returns a :class:`Request` from ``Method.calibration_request``; the shared pass
(:func:`peftlab.calibration.run.calibrate`) computes it once, caches it on disk
and hands the method a :class:`Statistics` mapping (layer name -> tensors).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from peftlab.errors import UserError

#: A sink receives one layer's result: ``sink(layer_name, {tensor_name: tensor})``.
Sink = Callable[[str, dict[str, Tensor]], None]


@dataclasses.dataclass(frozen=True)
class CalibrationData:
    """Where the calibration examples come from (the method's ``calibration`` option).

    ``dataset`` None reads the run's own dataset through the run's task (its
    tokenization and collation, so per-token labels can mask prompt tokens);
    the name of a dataset option (``stdlib_docs``, ``arith``, ...) reads that
    dataset instead, as plain text. ``num_samples`` examples of ``split`` are
    taken after a shuffle with a fixed seed (the same examples for every run
    seed), in batches of ``batch_size``.
    """

    dataset: str | None = None
    split: str = "train"
    num_samples: int = 256
    batch_size: int = 8
    max_memory_mb: float = 1024.0

    @classmethod
    def from_option(cls, value: Any, option: str = "method.calibration") -> CalibrationData:
        if value is None:
            return cls()
        if not isinstance(value, Mapping):
            raise UserError(f"{option}={value!r} is not allowed: use a mapping of dataset, split, num_samples, "
                            f"batch_size, max_memory_mb")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - fields)
        if unknown:
            raise UserError(f"unknown option {option}.{unknown[0]}: keys are {', '.join(sorted(fields))}")
        data = cls(**dict(value))
        for name in ("num_samples", "batch_size"):
            v = getattr(data, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UserError(f"{option}.{name}={v} is not allowed: use an integer >= 1")
        if isinstance(data.max_memory_mb, bool) or not isinstance(data.max_memory_mb, (int, float)) \
                or data.max_memory_mb <= 0:
            raise UserError(f"{option}.max_memory_mb={data.max_memory_mb} is not allowed: use a number > 0")
        if data.dataset is not None and (not isinstance(data.dataset, str) or not data.dataset):
            raise UserError(f"{option}.dataset={data.dataset!r} is not allowed: use null (the run's own data) "
                            f"or the name of a dataset option, e.g. stdlib_docs")
        return data


class Statistic:
    """A statistic of layer inputs, collected by forward hooks over calibration batches."""

    #: Its name in cache keys and records.
    name: str = ""

    def params(self) -> dict[str, Any]:
        """Everything besides model, data and layers the result depends on (part of the cache key)."""
        return {}

    def memory_bytes(self, model: nn.Module, layers: Sequence[str], max_bytes: int) -> int:
        """The memory the statistic keeps while it is collected (its state: covariances, components),
        besides the model and one batch's activations."""
        raise NotImplementedError

    def collect(self, model: nn.Module, layers: Sequence[str], batches: Sequence[dict[str, Tensor]],
                sink: Sink, *, max_bytes: int, say: Callable[[str], None]) -> dict[str, Any]:
        """Run the model over ``batches``, give each layer's result to ``sink``; return a JSON record
        (what the method needs besides tensors, e.g. EVA's ranks, and how the pass went)."""
        raise NotImplementedError


@dataclasses.dataclass
class Request:
    """A method's request: ``statistic`` of the inputs of ``layers``, on ``data``."""

    statistic: Statistic
    layers: list[str]
    data: CalibrationData


class Statistics(Mapping):
    """The result, layer name -> {tensor name: tensor}, read lazily (one layer at a time).

    ``info`` is the statistic's JSON record; ``record`` how the pass went
    (computed or cached, time, memory bound), for the run folder.
    """

    def __init__(self, load: Callable[[str], dict[str, Tensor]], layers: Sequence[str], info: dict[str, Any],
                 record: dict[str, Any] | None = None):
        self._load, self._layers = load, list(layers)
        self.info, self.record = info, dict(record or {})

    def __getitem__(self, name: str) -> dict[str, Tensor]:
        if name not in self._layers:
            raise KeyError(name)
        return self._load(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._layers)

    def __len__(self) -> int:
        return len(self._layers)
