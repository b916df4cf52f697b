"""Sequence classification: a classification head over the model, cross-entropy on the class.

Evaluated by loss, accuracy and macro-F1 (over the classes present in the split),
with per-class precision / recall / F1 and the confusion matrix as details, and one
prediction per example (the text as the model saw it, decoded from its tokens; the
label, the prediction, the class probabilities) written to ``predictions/``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from peftlab.layout import PREDICTIONS_DIR
from peftlab.tasks.base import Evaluation, Tally, Task, part_of


class Classification(Task):
    head = "sequence_classification"
    peft_task_type = "SEQ_CLS"  # what a PEFT adapter of this task declares
    metrics = ("accuracy", "f1_macro", "loss")
    outputs_folder = PREDICTIONS_DIR

    def __init__(self, metric: str = "accuracy"):
        super().__init__(metric)

    def read_labels(self, raw: Any) -> None:
        from peftlab.data.tokenize import label_names

        self.labels = label_names(raw)

    def adopt(self, raw: Any, name: str) -> Any:
        """The dataset's classes must be the run's (any order: label ids are mapped to the run's)."""
        from peftlab.data.tokenize import label_names
        from peftlab.errors import UserError

        names = label_names(raw)
        if names == list(self.labels):
            return raw
        if not set(names) <= set(self.labels):
            unknown = ", ".join(sorted(set(names) - set(self.labels)))
            raise UserError(f"dataset {name} has classes this run never learned ({unknown}); the run's classes are "
                            f"{', '.join(self.labels)}: evaluate on data labelled with them")
        mapping = {label: i for i, label in enumerate(self.labels)}
        return raw.align_labels_with_mapping(mapping, "label")

    def model_kwargs(self) -> dict[str, Any]:
        return {"num_labels": len(self.labels)}

    def tokenize(self, raw: Any, tokenizer: Any, max_length: int) -> Any:
        from peftlab.data.tokenize import tokenize_splits

        return tokenize_splits(raw, tokenizer, max_length)

    def collator(self, tokenizer: Any):
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer, return_tensors="pt")

    def measure(self, model: nn.Module, tokenizer: Any, split: Any, *, batch_size: int, device: Any, full: bool,
                part: tuple[int, int] = (0, 1)) -> Tally:
        from peftlab.evaluate import by_length, count, make_loader

        shard = part_of(split, part)
        batches = by_length(shard, batch_size)
        predictions: list = []
        confusion, loss_sum = count(model, make_loader(shard, self.collator(tokenizer), batch_size, batches),
                                    len(self.labels), device, predictions=predictions)
        in_order = [None] * len(predictions)  # back from length order to the split's order
        for index, prediction in zip((i for batch in batches for i in batch), predictions):
            in_order[index] = prediction
        texts = [tokenizer.decode(list(ids), skip_special_tokens=True) for ids in shard["input_ids"]]
        rows = [{"text": text, "label": self.labels[y], "prediction": self.labels[p],
                 "scores": {name: round(v, 6) for name, v in zip(self.labels, probs)}}
                for text, (y, p, probs) in zip(texts, in_order)]
        return {"confusion": confusion, "loss_sum": loss_sum, "rows": rows}

    def summarize(self, tally: Tally) -> Evaluation:
        from peftlab.evaluate import metrics_from, per_class

        confusion = tally["confusion"]
        details = {"labels": list(self.labels), "confusion": confusion.tolist(),
                   "per_class": per_class(confusion, list(self.labels))}
        rows = [{"index": i, **row} for i, row in enumerate(tally.get("rows", []))]
        return Evaluation(metrics_from(confusion, tally["loss_sum"]), rows, details)
