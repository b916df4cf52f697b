"""Sequence classification: a classification head over the model, cross-entropy on the class.

Evaluated by loss, accuracy and macro-F1 (over the classes present in the split).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from peftlab.tasks.base import Evaluation, Task


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

    def evaluate(self, model: nn.Module, tokenizer: Any, split: Any, *, batch_size: int, device: Any,
                 full: bool) -> Evaluation:
        from peftlab.evaluate import evaluate, make_loader

        loader = make_loader(split, self.collator(tokenizer), batch_size)
        return Evaluation(evaluate(model, loader, len(self.labels), device))
