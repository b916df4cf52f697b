"""PiSSA initialisation, peftlab against Hugging Face PEFT: time and how close each start is.

    python experiments/bench/init.py [--model minilm|gemma3-270m] [--rank 8] [--repeats 5] [--json PATH]

Each side adapts every Linear the model's defaults target, from a fresh copy of
the same pretrained model: peftlab's ``method.prepare`` (``method=pissa``, exact,
and ``method.svd_niter=4``) against PEFT's ``get_peft_model`` with
``init_lora_weights="pissa"`` and ``"pissa_niter_4"``. Configurations are timed
interleaved and medians reported.

Closeness, per side, as the largest over the adapted matrices of:

- ``part``: ||s B A - W_r|| / ||W_r||, where W_r is the best rank-r approximation
  of W from the fp64 SVD: how far the adapter's start is from PiSSA's definition;
- ``excess``: ||W - s B A|| / ||W - W_r|| - 1: the extra reconstruction error of
  the rank-r part over the best possible (0 for the exact triplets).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch

from peftlab.config import build, compose
from peftlab.methods.base import adapted_layers


def ours(loaded, rank: int, niter: int | None):
    model = copy.deepcopy(loaded.model)
    extra = [] if niter is None else [f"method.svd_niter={niter}"]
    method = build(compose(["method=pissa", f"method.rank={rank}", *extra]).method)
    start = time.perf_counter()
    method.prepare(model, target_defaults=loaded.target_defaults, head_modules=loaded.head_modules)
    seconds = time.perf_counter() - start
    return seconds, {name: layer.adapter.delta_weight().detach() for name, layer in adapted_layers(model).items()}


def theirs(loaded, rank: int, niter: int | None):
    import peft

    model = copy.deepcopy(loaded.model)
    config = peft.LoraConfig(r=rank, lora_alpha=rank, target_modules=list(loaded.target_defaults),
                             init_lora_weights="pissa" if niter is None else f"pissa_niter_{niter}")
    start = time.perf_counter()
    model = peft.get_peft_model(model, config)
    seconds = time.perf_counter() - start
    prefix = "base_model.model."
    return seconds, {name[len(prefix):]: module.get_delta_weight("default").detach()
                     for name, module in model.named_modules() if hasattr(module, "lora_A")}


def closeness(deltas: dict[str, torch.Tensor], weights: dict[str, torch.Tensor], rank: int) -> dict[str, float]:
    part, excess = 0.0, 0.0
    for name, delta in deltas.items():
        W = weights[name]
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        best = (U[:, :rank] * S[:rank]) @ Vh[:rank]
        part = max(part, float((delta.double() - best).norm() / best.norm()))
        excess = max(excess, float((W - delta.double()).norm() / (W - best).norm() - 1))
    return {"part": part, "excess": excess}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    loaded = build(compose([f"model={args.model}"]).model, num_labels=7, seed=0)
    cases = {f"{side} {mode}": (fn, niter) for mode, niter in (("exact", None), ("niter4", 4))
             for side, fn in (("peftlab", ours), ("peft", theirs))}
    times: dict[str, list[float]] = {name: [] for name in cases}
    deltas = {}
    for _ in range(args.repeats):
        for name, (fn, niter) in cases.items():
            torch.manual_seed(0)
            seconds, deltas[name] = fn(loaded, args.rank, niter)
            times[name].append(seconds)
    some = next(iter(deltas.values()))
    weights = {name: loaded.model.get_submodule(name).weight.detach().double() for name in some}
    rows = {}
    print(f"{args.model}: PiSSA r={args.rank} on {len(weights)} matrices, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}")
    for name in cases:
        rows[name] = {"seconds": statistics.median(times[name]), **closeness(deltas[name], weights, args.rank)}
        print(f"  {name:15s} {rows[name]['seconds'] * 1000:8.1f} ms   part {rows[name]['part']:.1e}   "
              f"excess {rows[name]['excess']:.1e}")
    for mode in ("exact", "niter4"):
        ratio = rows[f"peftlab {mode}"]["seconds"] / rows[f"peft {mode}"]["seconds"]
        rows[f"ratio {mode}"] = ratio
        print(f"  peftlab / peft, {mode}: {ratio:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "rank": args.rank, "threads": torch.get_num_threads(),
                                         "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
