"""CorDA's input covariance, streamed: at most ``max_memory_mb`` of n x n fp32 matrices at once.

For each example the inputs ``X`` (tokens x n, padding left out) of a layer
are scaled by ``1 / |max(X)|`` and ``X^T X`` is accumulated; the result is the
mean over examples, ``C = (1/N) sum_i X_i^T X_i`` (Yang et al. 2024, CorDA).
PEFT's ``preprocess_corda`` does the same per forward call with batches of one
example; here a batch of several examples is split into its examples, so the
result equals PEFT's for any batch size.

Memory bound: the layers are taken in groups whose covariances fit together
in ``max_memory_mb`` (at least one layer per group); one forward pass over the
calibration batches per group, with hooks on that group only, and each finished
covariance goes to the sink (the on-disk cache) before the next group starts.
PEFT keeps every layer's covariance at once, which runs out of memory on 7B
models. Layers that see the same input (q, k, v) share one covariance.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from peftlab.calibration.hooks import equal_input_groups, hooked, run_model, token_mask
from peftlab.calibration.request import Sink, Statistic


def _in_features(model: nn.Module, name: str) -> int:
    return int(model.get_submodule(name).weight.shape[1])


def groups_within(sizes: dict[str, int], max_bytes: int) -> list[list[str]]:
    """Consecutive groups of layers whose n x n fp32 matrices fit in ``max_bytes`` (one layer at least)."""
    out: list[list[str]] = []
    used = max_bytes + 1
    for name, n in sizes.items():
        need = n * n * 4
        if used + need > max_bytes or not out:
            out.append([])
            used = 0
        out[-1].append(name)
        used += need
    return out


class Covariance(Statistic):
    """``C = (1/N) sum_i X_i^T X_i`` per layer over N examples, ``X_i`` scaled by ``1/|max X_i|``."""

    name = "covariance"

    def memory_bytes(self, model: nn.Module, layers: Sequence[str], max_bytes: int) -> int:
        sizes = {name: _in_features(model, name) for name in layers}
        return max(sum(sizes[n] ** 2 * 4 for n in group) for group in groups_within(sizes, max_bytes))

    @torch.no_grad()
    def collect(self, model: nn.Module, layers: Sequence[str], batches: Sequence[dict[str, Tensor]],
                sink: Sink, *, max_bytes: int, say: Callable[[str], None]) -> dict[str, Any]:
        source = equal_input_groups(model, layers, batches[0])
        distinct = {name: _in_features(model, name) for name in layers if source[name] == name}
        groups = groups_within(distinct, max_bytes)
        count = 0
        for index, group in enumerate(groups, 1):
            start = time.perf_counter()
            sums = {name: torch.zeros(distinct[name], distinct[name], dtype=torch.float32,
                                      device=model.get_submodule(name).weight.device) for name in group}
            count, mask = 0, [torch.ones(0)]

            def accumulate(name: str) -> Callable[[Tensor], None]:
                def fn(x: Tensor) -> None:
                    for b, keep in enumerate(mask[0].to(x.device)):
                        xb = x[b][keep].float()
                        xb = xb / torch.max(xb).abs()
                        sums[name] += xb.t() @ xb
                return fn

            with hooked(model, {name: accumulate(name) for name in group}):
                for batch in batches:
                    mask[0] = token_mask(batch, label_mask=False)
                    run_model(model, batch)
                    count += int(batch["input_ids"].shape[0])
            for name in group:
                sink(name, {"covariance": (sums.pop(name) / count).cpu()})
            say(f"pass {index}/{len(groups)}: {len(group)} layer(s) in {time.perf_counter() - start:.1f}s")
        return {"source": source, "passes": len(groups), "examples": count}
