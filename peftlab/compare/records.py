"""The runs to compare: collected from paths, filtered by ``--where``, completed ones kept.

Runs are read through the run store's one reader (:class:`peftlab.runs.Run`),
found from paths by :func:`peftlab.finding.find_runs` and filtered by
:mod:`peftlab.where`. A run whose meta.json, summary.json, config.yaml or
overrides.txt is damaged (unreadable, not valid JSON/YAML, not an object) is
left out with a note naming the file, also with ``--all``: what it was cannot
be told, so it must not be ranked. A damaged analysis.json only loses the
analysis columns.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from peftlab.finding import find_runs
from peftlab.layout import ANALYSIS_FILE
from peftlab.runs import Run, runs_root
from peftlab.where import parse_all


def collect(paths: Sequence[str], notes: list[str] | None = None, runs_dir: str | Path | None = None) -> list[Run]:
    """Load the runs named by ``paths`` (see :mod:`peftlab.finding`), deduplicated, in the order found.

    ``<name>[/<version>]`` is looked up under the runs folder (``runs_dir``, else
    ``$PEFTLAB_RUNS_DIR``, else ``./runs``). Runs with a damaged file are left
    out. Remarks (sweep members without a run folder, damaged files, ...) are
    appended to ``notes`` when given.
    """
    found = find_runs(paths, runs_root(runs_dir), notes)
    kept = []
    for run in found:
        problems = run.problems()
        for problem in problems:
            _note(notes, f"{problem}: left out")
        if run.problem(ANALYSIS_FILE) is not None:
            _note(notes, f"{run.problem(ANALYSIS_FILE)}: its analysis is ignored")
        if not problems:
            kept.append(run)
    return kept


def _note(notes: list[str] | None, text: str) -> None:
    if notes is not None:
        notes.append(text)


def select(records: Sequence[Run], where: Iterable[str] = (), include_all: bool = False) -> tuple[list[Run], list[Run]]:
    """Apply ``--where`` filters and keep completed runs (all runs with ``include_all``).

    Returns ``(kept, left_out)`` where ``left_out`` are the runs that passed the
    filters but are not completed (for a footnote).
    """
    filters = parse_all(where, records)
    matched = [r for r in records if all(f(r) for f in filters)]
    if include_all:
        return matched, []
    kept = [r for r in matched if r.status == "completed"]
    return kept, [r for r in matched if r.status != "completed"]


def left_out_note(left_out: Sequence[Run]) -> str | None:
    """``"3 runs not completed (2 running, 1 failed) are left out; --all includes them"``."""
    if not left_out:
        return None
    counts = Counter(r.status for r in left_out)
    detail = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    n = len(left_out)
    return f"{n} run{'s' if n != 1 else ''} not completed ({detail}) left out; --all includes them"
