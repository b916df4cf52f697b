"""Training-step time of a causal-LM SFT step: peftlab's loss versus PEFT + the plain transformers forward.

    python experiments/bench_lm_step.py [--model gemma3-270m] [--steps 6] [--batch 8]

Same model, same LoRA (r=8 on the seven projections), same batches of real
arithmetic problems (prompt masked, response labelled), one process. peftlab
runs the decoder and applies the output layer only at the positions that
predict a response token; PEFT's model computes the logits of every position
(what ``model(**batch, labels=...)`` does) before the masked loss. One step =
forward + backward + AdamW step. The two are timed interleaved, round robin,
and medians reported, so drift of the machine hits both alike.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from peftlab.config import compose
from peftlab.experiment import build_experiment
from peftlab.methods.base import trainable_parameters


def batches(exp, size: int, count: int) -> list[dict]:
    from peftlab.evaluate import make_loader

    loader = make_loader(exp.splits["train"].select(range(size * count)), exp.task.collator(exp.tokenizer), size)
    return list(loader)


def peftlab_step(exp):
    opt = torch.optim.AdamW(list(trainable_parameters(exp.model).values()), lr=1e-4)

    def step(batch):
        loss, _ = exp.task.loss(exp.model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def peft_step(source: str, targets: list[str]):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=targets, lora_dropout=0.0)).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step(batch):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    exp = build_experiment(compose([f"model={args.model}", "dataset=arith", "method=lora", "method.rank=8",
                                    "method.dropout=0"]))
    exp.model.train()
    data = batches(exp, args.batch, args.steps + 1)
    steps = {"peftlab": peftlab_step(exp), "peft": peft_step(exp.loaded.source, list(exp.loaded.target_defaults))}
    times: dict[str, list[float]] = {k: [] for k in steps}
    for i, batch in enumerate(data):
        for name, step in steps.items():
            start = time.perf_counter()
            step(batch)
            if i:  # the first round warms up
                times[name].append(time.perf_counter() - start)
    tokens = sum(int(b["attention_mask"].sum()) for b in data[1:]) / len(data[1:])
    labelled = sum(int((b["labels"] != -100).sum()) for b in data[1:]) / len(data[1:])
    median = {k: statistics.median(v) for k, v in times.items()}
    print(f"model {args.model}, batch {args.batch}, {tokens:.0f} tokens per batch of which {labelled:.0f} "
          f"labelled, vocabulary {exp.model.config.vocab_size:,}, {args.steps} timed steps each")
    for name, value in median.items():
        print(f"  {name:8s} median step {value:.2f} s   (all: {', '.join(f'{t:.2f}' for t in times[name])})")
    print(f"  peftlab / peft = {median['peftlab'] / median['peft']:.2f}")


if __name__ == "__main__":
    main()
