"""How peftlab's costs scale, against Hugging Face PEFT's: step time and activation memory vs rank and
sequence length, PiSSA initialisation time vs width and number of layers.

    python experiments/bench/scaling.py [--out experiments/bench/results] [--quick] [--parts step,memory,init]

- Step time vs rank (1..256): LoRA on MiniLM, batch 32 x 64 tokens, peftlab and
  PEFT interleaved, median of a few steps per rank.
- Activation memory vs rank and vs sequence length: the bytes autograd saves for
  the backward pass in one forward (counted exactly with saved-tensor hooks,
  storage shared between saved tensors counted once), peftlab and PEFT.
- Initialisation time vs width and vs number of layers: PiSSA r=16 on a stack of
  square Linears, peftlab's ``method.prepare`` and PEFT's ``init_lora_weights="pissa"``,
  with the relative reconstruction error ``||W - (W_res + s B A)|| / ||W||`` of each.

Writes ``scaling.json`` and ``scaling.png`` (four panels) to ``--out``. ``--parts`` measures only
some of the three; the others are kept from the ``scaling.json`` already in ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step import load, make_batch, train_step  # noqa: E402

from peftlab.config import build, compose  # noqa: E402
from peftlab.methods.base import adapted_layers  # noqa: E402
from peftlab.methods.pissa import PiSSA  # noqa: E402


def lora_models(loaded, rank: int) -> dict[str, nn.Module]:
    import peft

    ours = copy.deepcopy(loaded.model)
    build(compose(["method=lora", f"method.rank={rank}", f"method.alpha={2 * rank}"]).method).prepare(
        ours, target_defaults=loaded.target_defaults, head_modules=loaded.head_modules)
    theirs = peft.get_peft_model(copy.deepcopy(loaded.model), peft.LoraConfig(
        r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=list(loaded.target_defaults),
        modules_to_save=list(loaded.head_modules)))
    return {"peftlab": ours.train(), "peft": theirs.train()}


def step_times(loaded, ranks: list[int], steps: int) -> dict[str, list[float]]:
    batch = make_batch(loaded, 32, 64)
    out: dict[str, list[float]] = {"peftlab": [], "peft": []}
    for rank in ranks:
        models = lora_models(loaded, rank)
        fns = {name: train_step(m, [p for p in m.parameters() if p.requires_grad]) for name, m in models.items()}
        times: dict[str, list[float]] = {k: [] for k in fns}
        for i in range(steps + 1):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn(batch)
                if i:
                    times[name].append(time.perf_counter() - start)
        for name in out:
            out[name].append(statistics.median(times[name]) * 1000)
        print(f"rank {rank:4d}: peftlab {out['peftlab'][-1]:7.1f} ms, peft {out['peft'][-1]:7.1f} ms", flush=True)
    return out


def saved_bytes(model: nn.Module, batch: dict) -> int:
    """Bytes autograd keeps for backward in one forward (each storage once)."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(**batch).loss
    return sum(storages.values())


def activation_memory(loaded, ranks: list[int], lengths: list[int]) -> dict:
    by_rank: dict[str, list[float]] = {"peftlab": [], "peft": []}
    for rank in ranks:
        for name, model in lora_models(loaded, rank).items():
            by_rank[name].append(saved_bytes(model, make_batch(loaded, 32, 64)) / 2**20)
    by_length: dict[str, list[float]] = {"peftlab": [], "peft": []}
    models = lora_models(loaded, 8)
    for length in lengths:
        for name, model in models.items():
            by_length[name].append(saved_bytes(model, make_batch(loaded, 32, length)) / 2**20)
    return {"by_rank_mb": by_rank, "by_length_mb": by_length}


def stack(width: int, layers: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Linear(width, width, bias=False) for _ in range(layers)])


def init_time(width: int, layers: int) -> dict[str, tuple[float, float]]:
    """(seconds, relative reconstruction error) of PiSSA r=16 initialisation, each side."""
    import peft

    base = stack(width, layers)
    weights = [m.weight.detach().clone() for m in base]
    targets = [str(i) for i in range(layers)]
    out = {}
    model = copy.deepcopy(base)
    start = time.perf_counter()
    PiSSA(rank=16, alpha=16).prepare(model, target_defaults=targets)
    seconds = time.perf_counter() - start
    err = max(float((layer.base.weight + layer.adapter.delta_weight().detach() - w).norm() / w.norm())
              for layer, w in zip(adapted_layers(model).values(), weights))
    out["peftlab"] = (seconds, err)
    model = copy.deepcopy(base)
    start = time.perf_counter()
    model = peft.get_peft_model(model, peft.LoraConfig(r=16, lora_alpha=16, target_modules=targets,
                                                       init_lora_weights="pissa"))
    seconds = time.perf_counter() - start
    errs = []
    for i, w in enumerate(weights):
        layer = model.base_model.model[i]
        merged = layer.base_layer.weight + layer.get_delta_weight("default")
        errs.append(float((merged - w).norm() / w.norm()))
    out["peft"] = (seconds, max(errs))
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    panels = [(axes[0, 0], results["ranks"], results["step_ms"], "rank", "ms per training step"),
              (axes[0, 1], results["ranks"], results["memory"]["by_rank_mb"], "rank", "activation MB saved"),
              (axes[1, 0], results["lengths"], results["memory"]["by_length_mb"], "sequence length",
               "activation MB saved (r=8)")]
    for ax, x, series, xlabel, ylabel in panels:
        for name, ys in series.items():
            ax.plot(x, ys, marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.legend()
    ax = axes[1, 1]
    for key, label in (("by_width", "width (8 layers)"), ("by_layers", "layers (width 512)")):
        xs = [row["x"] for row in results["init"][key]]
        for side in ("peftlab", "peft"):
            ax.plot(xs, [row[side][0] for row in results["init"][key]], marker="o", label=f"{side}, {label}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("width or layers")
    ax.set_ylabel("PiSSA init seconds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--quick", action="store_true", help="fewer points and steps (a smoke run)")
    parser.add_argument("--parts", default="step,memory,init",
                        help="which curves to measure (the others are kept from --out's scaling.json)")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if not parts or parts - {"step", "memory", "init"}:
        raise SystemExit(f"--parts={args.parts!r}: name some of step, memory, init")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    earlier = json.loads((out / "scaling.json").read_text()) if (out / "scaling.json").is_file() else {}
    if parts != {"step", "memory", "init"} and not earlier:
        raise SystemExit(f"--parts={args.parts!r} keeps the other curves from {out / 'scaling.json'}, which is missing")
    ranks = [1, 8, 64] if args.quick else [1, 2, 4, 8, 16, 32, 64, 128, 256]
    lengths = [16, 64] if args.quick else [16, 32, 64, 128]
    results = dict(earlier)
    threads = results.get("threads")  # per part: the parts kept from --out may have run at another count
    threads = dict(threads) if isinstance(threads, dict) else {part: threads for part in ("step", "memory", "init")}
    results["threads"] = {**threads, **{part: torch.get_num_threads() for part in parts}}
    if parts & {"step", "memory"}:
        loaded = load("minilm")
        results.update(ranks=ranks, lengths=lengths)
    if "step" in parts:
        results["step_ms"] = step_times(loaded, ranks, 2 if args.quick else 5)
    if "memory" in parts:
        results["memory"] = activation_memory(loaded, ranks, lengths)
    if "init" in parts:
        results["init"] = {"by_width": [], "by_layers": []}
        for width in ([256, 512] if args.quick else [256, 512, 1024, 2048]):
            results["init"]["by_width"].append({"x": width, **init_time(width, 8)})
        for layers in ([4, 8] if args.quick else [4, 8, 16, 32]):
            results["init"]["by_layers"].append({"x": layers, **init_time(512, layers)})
    for key, rows in results["init"].items():
        for row in rows:
            print(f"init {key} {row['x']:5d}: peftlab {row['peftlab'][0]:.3f} s (err {row['peftlab'][1]:.1e}), "
                  f"peft {row['peft'][0]:.3f} s (err {row['peft'][1]:.1e})")
    (out / "scaling.json").write_text(json.dumps(results, indent=1))
    plot(results, out / "scaling.png")
    print(f"wrote {out / 'scaling.json'} and {out / 'scaling.png'}")


if __name__ == "__main__":
    main()
