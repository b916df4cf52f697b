"""The order of batches: for training a pure function of (seed, position), so resume sees the same
batches; for evaluation and generation, by length."""

from __future__ import annotations

from typing import Sequence

import torch


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, lengths: list[int] | None = None) -> list[list[int]]:
    """The full batches of one epoch, a pure function of (seed, epoch).

    With ``lengths``, examples are grouped by length to cut padding: shuffle,
    sort within mega-batches of 50 batches, cut into batches, shuffle the batch
    order (the grouping of Hugging Face's ``group_by_length``).
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    size = min(batch_size, n)
    if lengths is None:
        return [perm[i : i + size] for i in range(0, n - size + 1, size)]
    mega = size * 50
    batches = []
    for start in range(0, n, mega):
        group = sorted(perm[start : start + mega], key=lambda j: -lengths[j])
        batches += [group[i : i + size] for i in range(0, len(group) - size + 1, size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]


def batch_order(n: int, batch_size: int, seed: int, start: int, stop: int,
                lengths: list[int] | None = None) -> list[list[int]]:
    """Index lists of micro-batches ``start..stop-1`` across epochs.

    Depends only on its arguments, so a resumed run sees the batches it would have seen.
    """
    per_epoch = max(1, n // batch_size)
    epochs: dict[int, list[list[int]]] = {}
    order = []
    for b in range(start, stop):
        epoch, i = divmod(b, per_epoch)
        if epoch not in epochs:
            epochs[epoch] = epoch_batches(n, batch_size, seed, epoch, lengths)
        order.append(epochs[epoch][i])
    return order


def length_sorted_batches(sequences: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    """Indices of ``sequences`` in batches of similar length (a stable sort, so ties keep their order).

    For evaluation and generation: less padding, and on a CPU small batches of
    similar length run much faster than large mixed ones (activations stay in cache).
    """
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
