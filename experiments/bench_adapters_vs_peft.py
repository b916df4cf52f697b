"""Training-step time of peftlab adapters versus Hugging Face PEFT, same model, same batch, one process.

    python experiments/bench_adapters_vs_peft.py [--steps 20] [--batch 32] [--length 64]

For each method (LoRA r=8, DoRA r=8) on MiniLM with the default targets (36
Linears), one training step = forward + backward + AdamW step. The floor is the
frozen model's forward plus the backward to its input embeddings (every
adapter method pays at least that). Configurations are timed interleaved, round
robin, and the median is reported, so drift of the machine hits all alike.
Results are ratios to the floor and peftlab / PEFT.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from peftlab.config import build, compose
from peftlab.methods.base import trainable_parameters


def make_batch(tokenizer, batch: int, length: int) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, tokenizer.vocab_size, (batch, length), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.randint(0, 7, (batch,), generator=g)}


def floor_step(model):
    for p in model.parameters():
        p.requires_grad_(False)
    emb = model.bert.embeddings
    emb.register_forward_hook(lambda m, i, out: out.requires_grad_(True))

    def step(batch):
        model(**batch).loss.backward()

    return step


def train_step(model, params):
    opt = torch.optim.AdamW(params, lr=1e-4)

    def step(batch):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def ours(base, targets, heads, method_name):
    model = copy.deepcopy(base)
    method = build(compose([f"method={method_name}"]).method)
    method.prepare(model, target_defaults=targets, head_modules=heads)
    return train_step(model.train(), list(trainable_parameters(model).values()))


def peft_side(base, targets, use_dora):
    import peft

    cfg = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=list(targets),
                          modules_to_save=["classifier"], use_dora=use_dora)
    model = peft.get_peft_model(copy.deepcopy(base), cfg)
    return train_step(model.train(), [p for p in model.parameters() if p.requires_grad])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(0)
    loaded = build(compose([]).model, num_labels=7, seed=0)
    base = loaded.model
    base.config.hidden_dropout_prob = base.config.attention_probs_dropout_prob = 0.0
    batch = make_batch(loaded.tokenizer, args.batch, args.length)
    configs = {
        "floor (frozen fwd+bwd)": floor_step(copy.deepcopy(base).train()),
        "peftlab lora r8": ours(base, loaded.target_defaults, loaded.head_modules, "lora"),
        "peft lora r8": peft_side(base, loaded.target_defaults, use_dora=False),
        "peftlab dora r8": ours(base, loaded.target_defaults, loaded.head_modules, "dora"),
        "peft dora r8": peft_side(base, loaded.target_defaults, use_dora=True),
    }
    times: dict[str, list[float]] = {k: [] for k in configs}
    for step in configs.values():  # warm-up
        step(batch)
    for _ in range(args.steps):
        for name, step in configs.items():
            t0 = time.perf_counter()
            step(batch)
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    floor = med["floor (frozen fwd+bwd)"]
    print(f"MiniLM, batch {args.batch} x {args.length} tokens, {args.steps} interleaved steps, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'configuration':26s} {'median ms/step':>15s} {'x floor':>8s}")
    for name, ms in med.items():
        print(f"{name:26s} {ms:15.1f} {ms / floor:8.2f}")
    for m in ("lora", "dora"):
        print(f"peftlab/peft {m}: {med[f'peftlab {m} r8'] / med[f'peft {m} r8']:.3f}  (below 1: peftlab is faster)")


if __name__ == "__main__":
    main()
