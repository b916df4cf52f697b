"""Per-matrix ranks (``ranks.json``) arranged by layer and module type, for ``show`` and ``compare``.

A module name such as ``bert.encoder.layer.3.attention.self.query`` is read as
layer 3 and module type ``attention.self.query``: the layer is the first
numeric part of the name, the type what follows it. A name without a number
is its own type in a column of its own. No torch here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

_LAYER = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")
#: The column of modules outside numbered layers.
NO_LAYER = "-"


def layer_and_kind(name: str) -> tuple[str, str]:
    """``("3", "attention.self.query")`` for ``bert.encoder.layer.3.attention.self.query``."""
    m = _LAYER.search(name)
    if m is None:
        return NO_LAYER, name
    return m.group(1), name[m.end():] or name[:m.start()]


def rank_grid(ranks: Mapping[str, float]) -> tuple[list[str], list[str], dict[tuple[str, str], float]]:
    """``(layers, kinds, cells)``: layers in numeric order, kinds in order of appearance,
    ``cells[(kind, layer)]`` the rank (absent where a layer has no module of that type)."""
    cells: dict[tuple[str, str], float] = {}
    kinds: list[str] = []
    layers: set[str] = set()
    for name, rank in ranks.items():
        layer, kind = layer_and_kind(name)
        if kind not in kinds:
            kinds.append(kind)
        layers.add(layer)
        cells[(kind, layer)] = rank
    ordered = sorted(layers, key=lambda x: (x == NO_LAYER, int(x) if x.isdigit() else 0))
    return ordered, kinds, cells


def mean_ranks(all_ranks: Sequence[Mapping[str, int]]) -> dict[str, float]:
    """Per-module mean over runs (seeds) that recorded ranks; modules any run lacks are left out."""
    present = [r for r in all_ranks if r]
    if not present:
        return {}
    names = [n for n in present[0] if all(n in r for r in present)]
    return {n: sum(r[n] for r in present) / len(present) for n in names}
