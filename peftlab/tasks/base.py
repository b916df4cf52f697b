"""The task protocol: the few things a training run needs to know about what it learns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from torch import Tensor, nn

from peftlab.errors import UserError


@dataclass
class Evaluation:
    """One evaluated split: its metrics, and what a reader may want to look at (outputs, details)."""

    metrics: dict[str, float]
    rows: list[dict] = field(default_factory=list)  # one per example, written to the run's outputs folder
    details: dict[str, Any] = field(default_factory=dict)  # e.g. a confusion matrix: goes to summary.json


#: What a task counts on (part of) a split: numbers and tensors that add up, lists that concatenate.
Tally = dict[str, Any]


def part_of(split: Any, part: tuple[int, int]) -> Any:
    """Contiguous part ``part[0]`` of ``part[1]`` of a dataset; in rank order the parts are the split."""
    index, count = part
    return split if count == 1 else split.shard(num_shards=count, index=index, contiguous=True)


def combine(tallies: list[Tally]) -> Tally:
    """The tally of the whole from the tallies of its parts (in order)."""
    out: Tally = {}
    for tally in tallies:
        for key, value in tally.items():
            if key not in out:
                out[key] = list(value) if isinstance(value, list) else value
            else:
                out[key] = out[key] + value  # lists concatenate, numbers and tensors add
    return out


class Task:
    """Base class. ``head`` names the family of transformers model classes the task loads
    (``sequence_classification`` or ``causal_lm``); ``metric`` is its key metric."""

    head: str = ""
    metrics: tuple[str, ...] = ()  # what evaluate() measures, any of which trainer.metric may name
    outputs_folder: str = "outputs"  # the run subfolder an Evaluation's rows are written to, one file per pass

    def __init__(self, metric: str):
        self.metric = str(metric)  # the default of trainer.metric
        self.check_metric(self.metric)
        self.labels: list[str] = []  # class names, for tasks that have classes
        self.data_report: dict[str, Any] = {}  # e.g. how many examples max_length truncated

    # -- data ---------------------------------------------------------------------
    def read_labels(self, raw: Any) -> None:
        """Learn what the raw splits say about the task (class names), before the model is built."""

    def adopt(self, raw: Any, name: str) -> Any:
        """Data from another dataset than the run's (``peftlab eval RUN dataset=...``), made readable by
        this trained task, or a UserError saying why it cannot be; ``raw`` unchanged by default."""
        return raw

    def model_kwargs(self) -> dict[str, Any]:
        """Extra arguments of the model loader (e.g. the number of classes)."""
        return {}

    def tokenize(self, raw: Any, tokenizer: Any, max_length: int) -> Any:
        """Raw splits -> model inputs (a DatasetDict), unpadded."""
        raise NotImplementedError

    def collator(self, tokenizer: Any) -> Callable[[list[dict]], dict[str, Tensor]]:
        """Pads a list of examples into a training batch."""
        raise NotImplementedError

    # -- training and evaluation --------------------------------------------------
    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Any]:
        """(training loss, the model outputs regularizers may look at)."""
        out = model(**batch)
        return out.loss, out

    def evaluate(self, model: nn.Module, tokenizer: Any, split: Any, *, batch_size: int, device: Any,
                 full: bool) -> Evaluation:
        """Metrics of ``model`` on one tokenized split. ``full`` asks for everything the task can
        measure (test), else what selection needs at each validation pass."""
        return self.summarize(self.measure(model, tokenizer, split, batch_size=batch_size, device=device, full=full))

    def measure(self, model: nn.Module, tokenizer: Any, split: Any, *, batch_size: int, device: Any, full: bool,
                part: tuple[int, int] = (0, 1)) -> Tally:
        """What ``evaluate`` counts, on part ``part[0]`` of ``part[1]`` contiguous parts of the split:
        sums and rows that :func:`combine` adds up, so the processes of a run can each measure a
        part and agree on the metrics of the whole."""
        raise NotImplementedError

    def summarize(self, tally: Tally) -> Evaluation:
        """The metrics of a (combined) tally."""
        raise NotImplementedError

    def check_metric(self, metric: str) -> None:
        """UserError unless the validation passes of this task measure ``metric``."""
        if metric not in self.metrics:
            raise UserError(f"metric '{metric}' is not measured by the {type(self).__name__} task: "
                            f"set trainer.metric to one of {', '.join(self.metrics)}")

    def check_model(self, model: nn.Module, name: str) -> None:
        """UserError when the loaded model cannot do this task."""

    def state(self) -> dict[str, Any]:
        """What rebuilding a trained run needs besides its config (class names)."""
        return {"labels": list(self.labels)}

    def load_state(self, state: dict[str, Any]) -> None:
        self.labels = list(state.get("labels") or [])
