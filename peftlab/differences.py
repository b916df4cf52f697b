"""Which settings tell runs apart: the keys whose values differ between listed runs.

The candidates are what the user chose: the keys of the overrides they typed
(``method.rank``, ``optimizer.lr``, ...; what a sweep varies), the config
groups (``dataset``, ``model``, ...) and the seed, in that order of interest. Of those, only the keys whose values are
not the same in every run are columns worth showing. No torch.
"""

from __future__ import annotations

from collections.abc import Sequence

from peftlab.runs import Run
from peftlab.values import MISSING, canonical

#: Keys that name or place a run rather than configure it; the method has a column of its own.
NOT_SETTINGS = frozenset({"name", "runs_dir", "resume", "method"})


def candidate_keys(runs: Sequence[Run]) -> list[str]:
    """Typed override keys, then group choices, then seed; each once, in the order first seen."""
    keys: dict[str, None] = {}
    for run in runs:
        keys.update(dict.fromkeys(k for k in run.override_map() if not k.startswith("hydra")))
    for run in runs:
        keys.update(dict.fromkeys(run.choices))
    keys["seed"] = None
    return [k for k in keys if k not in NOT_SETTINGS]


def differing_keys(runs: Sequence[Run]) -> list[str]:
    """The candidate keys whose value is not the same in every run (a missing value counts as one)."""
    out = []
    for key in candidate_keys(runs):
        values = {None if (v := r.value(key)) is MISSING else canonical(v) for r in runs}
        if len(values) > 1:
            out.append(key)
    return out


def short_names(keys: Sequence[str]) -> dict[str, str]:
    """A narrow header per key: its last part (``rank`` for ``method.rank``) unless two keys share it."""
    last = [k.rpartition(".")[2] for k in keys]
    return {k: (short if last.count(short) == 1 else k) for k, short in zip(keys, last)}


def shown_value(run: Run, key: str) -> str:
    """The run's value for a column: numbers compactly, a missing key as '-'."""
    value = run.value(key)
    if value is MISSING or value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    return canonical(value)
