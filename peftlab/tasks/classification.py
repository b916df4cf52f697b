"""Sequence classification: a classification head over the model, cross-entropy on the class.

Evaluated by loss, accuracy and macro-F1 (over the classes present in the split).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from peftlab.tasks.base import Evaluation, Tally, Task, part_of


class Classification(Task):
    head = "sequence_classification"
    peft_task_type = "SEQ_CLS"  # what a PEFT adapter of this task declares
    metrics = ("accuracy", "f1_macro", "loss")

    def __init__(self, metric: str = "accuracy"):
        super().__init__(metric)

    def read_labels(self, raw: Any) -> None:
        from peftlab.data.tokenize import label_names

        self.labels = label_names(raw)

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
        from peftlab.evaluate import count, make_loader

        loader = make_loader(part_of(split, part), self.collator(tokenizer), batch_size)
        confusion, loss_sum = count(model, loader, len(self.labels), device)
        return {"confusion": confusion, "loss_sum": loss_sum}

    def summarize(self, tally: Tally) -> Evaluation:
        from peftlab.evaluate import metrics_from

        return Evaluation(metrics_from(tally["confusion"], tally["loss_sum"]))
