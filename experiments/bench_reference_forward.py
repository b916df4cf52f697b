"""What the pretrained model's outputs cost: a training step with and without BA-LoRA's terms.

    python experiments/bench_reference_forward.py [--model minilm] [--steps 8] [--batch 32]
    python experiments/bench_reference_forward.py --model tiny_lm --dataset arith --batch 8

Same model, same PiSSA adapter (r=8), same batches of the real training split,
one process. Arms, one step = forward + backward + AdamW step:

* ``pissa``: the task loss alone;
* ``diversity+svd``: the two BA-LoRA terms that need no reference outputs;
* ``ba_lora``: all three BA-LoRA terms: the consistency term triggers one extra
  forward without gradients (the pretrained function) per micro-batch;
* ``ba_lora+kl``: the three plus KL to the pretrained model, a second term
  that reads the same reference outputs (the forward must not run twice).

The arms are timed interleaved, round robin, and medians reported, so drift of
a shared machine hits every arm alike. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from peftlab.config import build, compose
from peftlab.experiment import build_experiment
from peftlab.methods.base import trainable_parameters
from peftlab.regularizers.base import RegularizerContext, add_terms

ARMS = {
    "pissa": [],
    "diversity+svd": ["ba_diversity", "ba_svd"],
    "ba_lora": ["ba_consistency", "ba_diversity", "ba_svd"],
    "ba_lora+kl": ["ba_consistency", "ba_diversity", "ba_svd", "kl_pretrained"],
}


def batches(exp, size: int, count: int) -> list[dict]:
    from peftlab.evaluate import make_loader

    loader = make_loader(exp.splits["train"].select(range(size * count)), exp.task.collator(exp.tokenizer), size)
    return list(loader)


def regularizers(names: list[str]) -> list:
    if not names:
        return []
    cfg = compose([f"regularizer=[{','.join(names)}]"])
    return [build(cfg.regularizer[n], name=n) for n in names]


def stepper(exp, names: list[str]):
    regs = regularizers(names)
    params = list(trainable_parameters(exp.model).values())
    opt = torch.optim.AdamW(params, lr=1e-6)  # tiny: the arms share one model and must stay comparable

    def step(batch):
        loss, out = exp.task.loss(exp.model, batch)
        if regs:
            extra, _ = add_terms(regs, RegularizerContext(exp.model, exp.method, batch, out, exp.task))
            loss = loss + extra
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--dataset", default="stdlib_docs")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    exp = build_experiment(compose([f"model={args.model}", f"dataset={args.dataset}", "method=pissa",
                                    "method.rank=8"]))
    exp.model.train()
    data = batches(exp, args.batch, args.steps + 1)
    steps = {arm: stepper(exp, names) for arm, names in ARMS.items()}
    times: dict[str, list[float]] = {k: [] for k in steps}
    for i, batch in enumerate(data):
        for name, step in steps.items():
            start = time.perf_counter()
            step(batch)
            if i:  # the first round warms up
                times[name].append(time.perf_counter() - start)
    base = statistics.median(times["pissa"])
    print(f"model={args.model} dataset={args.dataset} batch={args.batch}, {args.steps} timed steps per arm, "
          f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}\n")
    print("| arm | median step (s) | vs pissa |")
    print("|---|---:|---:|")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"| {name} | {med:.3f} | {med / base:.2f}x |")


if __name__ == "__main__":
    main()
