"""Notes under the table: what the reader must know before trusting a comparison.

* how the rows were ranked when some runs predate checkpoint selection, cannot
  be ranked, or keep different checkpoints (:mod:`~peftlab.compare.selection`);
* rows trained on different datasets (the resolved ``dataset`` config node
  differs), whose metrics do not measure the same thing;
* every configuration tying on validation (then none is marked best);
* runs whose ``trainer.max_steps`` (or another resumable key) a resume changed mid-run;
* rows with a single seed, whose differences may be seed noise.

The command line prints them under the table (to stderr for the machine
formats), the JSON output carries them as ``"notes"`` and the HTML report shows
them under its table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from peftlab.compare.grouping import Row, all_tie
from peftlab.runs import Run
from peftlab.compare.selection import fallback_notes, legacy_note, mixed_selection_note, unranked_notes
from peftlab.values import canonical

#: Dataset keys that name a dataset; the others only tell two same-named ones apart.
_NAME_KEYS = ("path", "name", "subset")
#: Dataset keys that never tell datasets apart (prose, the loader's import path).
_QUIET_KEYS = ("description", "_target_")


def row_notes(rows: Sequence[Row]) -> list[str]:
    """Every note about ``rows``: ranking, datasets, single seeds (empty when all is well)."""
    if not rows:
        return []
    records = [rec for r in rows for rec in r.records]
    metric = rows[0].metric
    notes = [legacy_note(records, metric), *unranked_notes(records, metric), *fallback_notes(records)]
    notes.append(mixed_selection_note(records))
    notes += [tie_note(rows), dataset_note(records), changed_on_resume_note(records), single_seed_note(rows)]
    return [n for n in notes if n]


def tie_note(rows: Sequence[Row]) -> str | None:
    """Says that every configuration ties on validation, so none is marked best."""
    if not all_tie(rows):
        return None
    value = next(r.val_mean for r in rows if r.val_mean is not None)
    return (f"every configuration ties on validation {rows[0].metric} ({value:.4g}): none is marked best; "
            "the test column does not choose between them")


def changed_on_resume_note(records: Sequence[Run]) -> str | None:
    """Names the runs a resume changed mid-run (``trainer.max_steps`` from 8 to 12 at step 8, say):
    they are grouped by the values they ended with, but trained part of the way with the old ones."""
    changed = [(rec, c) for rec in records for c in rec.meta.get("changed_on_resume") or []]
    if not changed:
        return None
    said = [f"{rec.label}: {_changes(c)} at step {c.get('step')}" for rec, c in changed]
    return (f"{len({id(rec) for rec, _ in changed})} run(s) changed on resume, mid-run ({'; '.join(said)}): "
            "grouped by their final values, they trained part of the way with the old ones (a schedule set by "
            "max_steps is not a fresh run's)")


def _changes(change: dict) -> str:
    return ", ".join(f"{key} {pair[0]} -> {pair[1]}" for key, pair in change.items() if key != "step")


def single_seed_note(rows: Sequence[Row]) -> str | None:
    """Says which rows rest on one seed: their differences may be noise."""
    single = [r for r in rows if r.n == 1]
    if not single:
        return None
    who = "every configuration has" if len(single) == len(rows) else f"{len(single)} of {len(rows)} configurations have"
    return f"{who} n = 1 (a single seed): differences may be seed noise; run more seeds, e.g. seed=0,1,2"


def _datasets(records: Sequence[Run]) -> dict[str, tuple[dict, list[Run]]]:
    """The distinct resolved ``dataset`` nodes (by value) and the runs trained on each."""
    found: dict[str, tuple[dict, list[Run]]] = {}
    for rec in records:
        node = rec.config.get("dataset")
        if isinstance(node, dict):  # a run without a config cannot say: it is not counted
            found.setdefault(canonical(node), (node, []))[1].append(rec)
    return found


def _differing_keys(nodes: Sequence[dict]) -> list[str]:
    """The dataset keys whose value is not the same in every node (in first-seen order)."""
    keys: list[str] = []
    for node in nodes:
        keys += [k for k in node if k not in keys]
    missing = object()
    return [k for k in keys if len({canonical(n.get(k, missing)) for n in nodes}) > 1]


def _short(value: Any) -> str:
    text = canonical(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _dataset_name(node: dict, rec: Run, detail: Sequence[str]) -> str:
    """``stdlib_docs``, ``hf path=reviews.csv`` (+ the keys in ``detail`` when needed to tell apart)."""
    base = str(rec.choices.get("dataset") or str(node.get("_target_", "dataset")).rsplit(".", 1)[-1])
    parts = [base] + [f"{k}={_short(node[k])}" for k in detail if k in node]
    return " ".join(parts)


def dataset_note(records: Sequence[Run]) -> str | None:
    """Names the datasets when the runs were not all trained on the same one."""
    datasets = list(_datasets(records).values())
    if len(datasets) < 2:
        return None
    nodes = [node for node, _ in datasets]
    differing = [k for k in _differing_keys(nodes) if k not in _QUIET_KEYS]
    naming = [k for k in differing if k in _NAME_KEYS]
    names = [_dataset_name(node, recs[0], naming) for node, recs in datasets]
    if len(set(names)) < len(names):  # same name, other fields (e.g. text_field): show them all
        names = [_dataset_name(node, recs[0], differing) for node, recs in datasets]
    listed = "; ".join(f"{name} ({len(recs)} run(s))" for name, (_, recs) in zip(names, datasets))
    return f"the rows were trained on different datasets: {listed}; their metrics are not comparable"
