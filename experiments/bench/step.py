"""Training-step time of peftlab's adapters versus Hugging Face PEFT's, same model, same batch, one process.

    python experiments/bench/step.py [--model minilm|tiny_lm|gemma3-270m] [--methods lora,dora,pissa,olora]
                                     [--steps 12] [--batch 32] [--length 64] [--memory]

One step = forward + backward + AdamW step through ``model(**batch).loss`` on
both sides, so only the adapters differ. Every model, decoders included, gets a
7-class sequence-classification head: what is timed is the transformer's layers
and their adapters. The causal-LM step with its output layer (where peftlab's
loss skips the logits of unlabelled positions) is measured apart in
``experiments/bench_lm_step.py``. The floor is the frozen model's forward plus
the backward to its input embeddings, which every adapter method pays at least.
Configurations are timed interleaved, round robin, and medians reported, so
drift of the machine hits all alike.

MFU: the FLOPs of one step (counted by torch's FlopCounterMode) per second,
over the machine's measured peak: the median rate of a 2048 x 2048 float32
matmul at the same thread count. ``--memory`` adds each configuration's peak
resident memory (VmHWM), measured alone in a fresh process (3 steps).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from peftlab.config import build, compose
from peftlab.methods.base import trainable_parameters

PEFT_INIT = {"lora": True, "dora": True, "pissa": "pissa", "olora": "olora"}  # LoRA-shaped, PEFT's LoraConfig
#: every method both libraries have; EVA, CorDA and MiLoRA train as LoRA does (only their start differs)
SHARED = ["lora", "dora", "pissa", "olora", "adalora", "miss", "randlora"]


def load(model_name: str):
    loaded = build(compose([f"model={model_name}"]).model, num_labels=7, seed=0)
    model = loaded.model
    for module in model.modules():  # no dropout: both sides then compute the same thing
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return loaded


def make_batch(loaded, batch: int, length: int) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, min(loaded.tokenizer.vocab_size, 30000), (batch, length), generator=g)
    labels = torch.randint(0, 7, (batch,), generator=g)  # load() gives every model a 7-class head
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def floor_step(model) -> Callable[[dict], None]:
    for p in model.parameters():
        p.requires_grad_(False)
    model.get_input_embeddings().register_forward_hook(lambda m, i, out: out.requires_grad_(True))
    return lambda batch: model(**batch).loss.backward()


def train_step(model, params) -> Callable[[dict], None]:
    opt = torch.optim.AdamW(params, lr=1e-4)

    def step(batch):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def peftlab_side(loaded, method_name: str) -> Callable[[dict], None]:
    model = copy.deepcopy(loaded.model)
    method = build(method_options(method_name))
    method.prepare(model, target_defaults=loaded.target_defaults, head_modules=loaded.head_modules)
    return train_step(model.train(), list(trainable_parameters(model).values()))


def method_options(method_name: str):
    """The method's YAML; rank 8 for LoRA-shaped methods and MiSS (AdaLoRA and RandLoRA keep their defaults)."""
    rank = ["method.rank=8"] if method_name in PEFT_INIT or method_name == "miss" else []
    return compose([f"method={method_name}", *rank]).method


def peft_config(method_name: str, options, targets: list[str], heads: list[str]):
    """PEFT's config for the same method with our YAML's values (rank 8 where the method has a rank)."""
    import peft

    common = {"target_modules": targets, "modules_to_save": heads or None}
    if method_name in PEFT_INIT:
        return peft.LoraConfig(r=8, lora_alpha=float(options.alpha), lora_dropout=0.0, use_dora=method_name == "dora",
                               init_lora_weights=PEFT_INIT[method_name], **common)
    if method_name == "adalora":  # no orthogonality term in the forward: ours adds it in the loop, not here
        return peft.AdaLoraConfig(init_r=int(options.rank), target_r=int(options.target_rank),
                                  lora_alpha=float(options.alpha), orth_reg_weight=0.0, total_step=1000, **common)
    if method_name == "miss":
        return peft.MissConfig(r=int(options.rank), miss_dropout=0.0, **common)
    if method_name == "randlora":
        return peft.RandLoraConfig(r=int(options.rank), randlora_alpha=float(options.alpha), randlora_dropout=0.0,
                                   **common)
    raise SystemExit(f"no PEFT counterpart configured for method {method_name!r}")


def peft_side(loaded, method_name: str) -> Callable[[dict], None]:
    import peft

    options = method_options(method_name)
    cfg = peft_config(method_name, options, list(loaded.target_defaults), list(loaded.head_modules))
    model = peft.get_peft_model(copy.deepcopy(loaded.model), cfg)
    return train_step(model.train(), [p for p in model.parameters() if p.requires_grad])


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of an n x n float32 matmul (median of ``repeats``)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times)


def step_flops(step: Callable[[dict], None], batch: dict) -> int:
    with FlopCounterMode(display=False) as counter:
        step(batch)
    return counter.get_total_flops()


def configurations(loaded, methods: list[str]) -> dict[str, Callable[[], Callable[[dict], None]]]:
    made = {"floor (frozen fwd+bwd)": lambda: floor_step(copy.deepcopy(loaded.model).train())}
    for m in methods:
        made[f"peftlab {m}"] = lambda m=m: peftlab_side(loaded, m)
        made[f"peft {m}"] = lambda m=m: peft_side(loaded, m)
    return made


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM). Not ru_maxrss: after fork and exec that keeps
    the parent's high-water mark, which would give every child the benchmark's own size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise SystemExit("no VmHWM in /proc/self/status: --memory needs Linux")


def child_peak_rss(args, name: str) -> float:
    """Peak RSS (MB) of one configuration run alone for 3 steps, in a fresh process."""
    cmd = [sys.executable, __file__, "--model", args.model, "--methods", ",".join(args.methods),
           "--batch", str(args.batch), "--length", str(args.length), "--only", name]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"memory child for {name!r} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--methods", type=lambda s: s.split(","), default=SHARED)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--memory", action="store_true")
    parser.add_argument("--only", help=argparse.SUPPRESS)  # a memory child: one configuration, 3 steps
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    torch.manual_seed(0)
    loaded = load(args.model)
    batch = make_batch(loaded, args.batch, args.length)
    makers = configurations(loaded, args.methods)
    if args.only:
        step = makers[args.only]()
        for _ in range(3):
            step(batch)
        print(peak_rss_mb())
        return
    steps = {name: make() for name, make in makers.items()}
    flops = {name: step_flops(step, batch) for name, step in steps.items()}  # also creates AdamW's state
    for step in steps.values():  # a warm-up step outside the FLOP counter, whose dispatch is slow
        step(batch)
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(args.steps):
        for name, step in steps.items():
            start = time.perf_counter()
            step(batch)
            times[name].append(time.perf_counter() - start)
    peak = matmul_peak()
    memory = {name: child_peak_rss(args, name) for name in steps} if args.memory else {}
    median = {k: statistics.median(v) for k, v in times.items()}
    floor = median["floor (frozen fwd+bwd)"]
    print(f"{args.model}, batch {args.batch} x {args.length} tokens, rank 8 on the default targets, {args.steps} "
          f"interleaved steps, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"matmul peak {peak / 1e9:.1f} GFLOP/s")
    print(f"{'configuration':24s} {'ms/step':>9s} {'x floor':>8s} {'GFLOP/step':>11s} {'MFU':>6s}"
          + (f" {'peak RSS MB':>12s}" if memory else ""))
    rows = []
    for name, t in median.items():
        mfu = flops[name] / t / peak
        rows.append({"configuration": name, "ms": t * 1000, "x_floor": t / floor, "gflop": flops[name] / 1e9,
                     "mfu": mfu, "peak_rss_mb": memory.get(name)})
        print(f"{name:24s} {t * 1000:9.1f} {t / floor:8.2f} {flops[name] / 1e9:11.1f} {mfu:6.1%}"
              + (f" {memory[name]:12.0f}" if memory else ""))
    ratios = {m: median[f"peftlab {m}"] / median[f"peft {m}"] for m in args.methods}
    for m, ratio in ratios.items():
        print(f"peftlab / peft, {m}: {ratio:.3f}  (below 1: peftlab is faster)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "threads": torch.get_num_threads(), "batch": args.batch,
                       "length": args.length, "peak_gflops": peak / 1e9, "rows": rows, "ratios": ratios}, f, indent=1)


if __name__ == "__main__":
    main()
