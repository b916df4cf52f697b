"""Which number ranks a run: the validation metric of the checkpoint the run keeps.

Configurations are chosen on validation, never on test: choosing on test would
make the test metric of the chosen row an optimistic estimate. A run's
summary.json says which checkpoint it keeps as its result::

    metric             the key metric's name
    selection          "best" | "final" (trainer.select)
    selected_step      the step of that checkpoint
    test               {metric: value} of the selected checkpoint
    final_test         test metrics at the final step (may be absent)
    best_validation    {"step": int, metric: value, ...}: the best validation evaluation
    final_validation   validation metrics at the final step

The validation value that ranks a run is ``best_validation[metric]`` when
``selection`` is "best", else ``final_validation[metric]``, so that validation
and the reported test describe the same checkpoint. Runs written before
checkpoint selection have no ``selection``: their test was measured at the
final step, so their final validation ranks them (and a note says so). A run
without that validation value is shown but cannot be ranked. A run that could
not keep its best checkpoint says why in ``selection_note`` (its ``selection``
is then "final"); compare repeats it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from peftlab.runs import Run
from peftlab.values import as_number
from peftlab.metrics import selected_section

#: The summary.json key naming the kept checkpoint; its absence marks a run made before selection existed.
SELECTION_KEY = "selection"
#: How many run names a note lists before "...".
_SHOWN = 3


@dataclass(frozen=True)
class Selected:
    """The validation value that ranks one run, and where it came from."""

    value: float | None
    section: str  # "best_validation" or "final_validation"
    legacy: bool  # made before checkpoint selection: test was measured at the final step
    reason: str | None = None  # why there is no value

    @property
    def ranked(self) -> bool:
        return self.value is not None


def selected_validation(rec: Run, metric: str) -> Selected:
    """The validation ``metric`` of the checkpoint ``rec`` keeps (see the module docstring)."""
    summary = rec.summary
    if not summary:
        return Selected(None, "final_validation", legacy=False, reason="no summary.json yet")
    section = selected_section(summary)
    node = summary.get(section)
    value = as_number(node.get(metric)) if isinstance(node, dict) else None
    if value is not None and not math.isfinite(value):
        value = None
    reason = None if value is not None else f"summary.json has no {section} {metric}"
    return Selected(value, section, legacy=SELECTION_KEY not in summary, reason=reason)


def _names(records: Sequence[Run]) -> str:
    shown = ", ".join(r.label for r in records[:_SHOWN])
    return shown + (", ..." if len(records) > _SHOWN else "")


def legacy_note(records: Sequence[Run], metric: str) -> str | None:
    """Says how many runs predate checkpoint selection (ranked by final validation, test at the final step)."""
    old = [r for r in records if r.summary and selected_validation(r, metric).legacy]
    if not old:
        return None
    return (
        f"test at the final step for {len(old)} run(s) made before checkpoint selection: "
        f"ranked by their final validation {metric}"
    )


def unranked_notes(records: Sequence[Run], metric: str) -> list[str]:
    """One note per reason some runs have no validation value: they are shown, not ranked."""
    by_reason: dict[str, list[Run]] = {}
    for rec in records:
        sel = selected_validation(rec, metric)
        if not sel.ranked:
            by_reason.setdefault(str(sel.reason), []).append(rec)
    return [
        f"{len(recs)} run(s) cannot be ranked ({reason}): {_names(recs)}; shown without a mark"
        for reason, recs in by_reason.items()
    ]


def mixed_selection_note(records: Sequence[Run]) -> str | None:
    """Says when runs keep different checkpoints (best vs final): their numbers are not alike."""
    # a run made before selection kept its final step, like selection "final"
    kinds = Counter("best" if r.summary.get(SELECTION_KEY) == "best" else "final" for r in records if r.summary)
    if len(kinds) < 2:
        return None
    detail = ", ".join(f"{kind}: {n}" for kind, n in sorted(kinds.items()))
    return f"the runs keep different checkpoints ({detail}): set the same trainer.select to compare them"


def fallback_notes(records: Sequence[Run]) -> list[str]:
    """Says which runs kept their final step against trainer.select, and why (summary ``selection_note``)."""
    by_why: dict[str, list[Run]] = {}
    for rec in records:
        why = rec.summary.get("selection_note")
        if why:
            by_why.setdefault(str(why), []).append(rec)
    return [f"{len(recs)} run(s) kept the final step instead of the best ({why}): {_names(recs)}"
            for why, recs in by_why.items()]
