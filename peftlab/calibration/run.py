"""The calibration pass: run a method's :class:`Request` once, from the cache when possible.

:func:`collect` computes a statistic in memory (tests, small models);
:func:`calibrate` goes through the on-disk cache (see :mod:`.cache`): the
first run of a sweep computes, the others read. Either way the model runs in
eval mode without gradients, and is left as it was found.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

from peftlab.calibration import cache
from peftlab.calibration.request import Request, Statistics

MIB = 2**20


def _say(line: str) -> None:
    print(f"calibration: {line}", file=sys.stderr, flush=True)


def _eval_mode(model: nn.Module) -> Callable[[], None]:
    was = model.training
    model.eval()
    return lambda: model.train(was)


def collect(model: nn.Module, request: Request, batches: Sequence[dict[str, Tensor]],
            say: Callable[[str], None] = lambda line: None) -> Statistics:
    """The statistic computed in memory, without the cache."""
    results: dict[str, dict[str, Tensor]] = {}
    restore = _eval_mode(model)
    try:
        info = request.statistic.collect(model, request.layers, batches, results.__setitem__,
                                         max_bytes=int(request.data.max_memory_mb * MIB), say=say)
    finally:
        restore()
    source = info.get("source", {})
    return Statistics(lambda name: results.get(name) or results[source[name]], request.layers, info)


def calibrate(model: nn.Module, request: Request, batches: Sequence[dict[str, Tensor]], *,
              say: Callable[[str], None] = _say) -> Statistics:
    """The statistic from the cache, computed (once, under a lock) when absent.

    ``Statistics.record`` says what happened: the cache key, whether it was
    computed, its time, the number of examples and the memory bound.
    """
    stat = request.statistic
    max_bytes = int(request.data.max_memory_mb * MIB)
    key = cache.cache_key(cache.model_fingerprint(model), cache.data_fingerprint(batches), request.layers,
                          stat.name, stat.params(), request.data.num_samples)
    root = cache.cache_root()
    record = {"statistic": stat.name, "key": key, "dataset": request.data.dataset,
              "split": request.data.split, "examples": sum(int(b["input_ids"].shape[0]) for b in batches),
              "batches": len(batches), "layers": len(request.layers),
              "memory_bytes": stat.memory_bytes(model, request.layers, max_bytes)}
    start = time.perf_counter()
    with cache.locked(root, key):
        entry = cache.read(root, key)
        computed = entry is None
        if computed:
            say(f"{stat.name} of {len(request.layers)} layers over {record['examples']} examples "
                f"(at most {record['memory_bytes'] / MIB:,.1f} MiB of statistics at once)")
            entry = _compute(model, request, batches, root, key, max_bytes, say)
    record.update(computed=computed, seconds=round(time.perf_counter() - start, 3))
    say(f"{'computed' if computed else 'read from the cache'} in {record['seconds']:.1f}s ({root / key})")
    return Statistics(entry.load, request.layers, entry.info, record)


def _compute(model: nn.Module, request: Request, batches: Sequence[dict[str, Tensor]], root: Any, key: str,
             max_bytes: int, say: Callable[[str], None]) -> cache.Entry:
    writer = cache.Writer(root, key)
    restore = _eval_mode(model)
    try:
        info = request.statistic.collect(model, request.layers, batches, writer.sink, max_bytes=max_bytes, say=say)
        return writer.finish(info)
    finally:
        restore()
        writer.discard()
