"""Choosing each configuration's setting from its tuning runs, on validation only.

A tuning member's overrides are its configuration's overrides plus one value of
each tuned key plus the tuning seed; its score is the validation metric at the
checkpoint its run kept (the same number ``peftlab compare`` ranks by). The best
completed member of each configuration wins; ties go to the first value tried.
Test results of the tuning runs are never read here. A choice at the first or
last value of an interval is named (``edge_notes``): the configuration's best may
lie outside the range searched, so its comparison with the others is not settled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from peftlab.compare.grouping import lower_is_better
from peftlab.compare.selection import selected_validation
from peftlab.study.spec import Tuned
from peftlab.sweep.planning import key_of
from peftlab.sweep.status import Member
from peftlab.values import override_key


@dataclass
class Choice:
    """One configuration: what it tried and what won on validation (``setting`` empty when nothing completed)."""

    configuration: list[str]
    setting: list[str] = field(default_factory=list)  # the tuned keys' overrides of the best member
    validation: float | None = None
    tried: int = 0
    completed: int = 0

    def record(self) -> dict:
        return {"configuration": self.configuration, "setting": self.setting, "validation": self.validation,
                "tried": self.tried, "completed": self.completed}


def configuration_of(overrides: Sequence[str], tuned_keys: Sequence[str]) -> list[str]:
    """A member's overrides without the tuned keys and the seed: what identifies its configuration."""
    drop = set(tuned_keys) | {"seed"}
    return [o for o in overrides if key_of(o) not in drop]


def distinguishing(configurations: Sequence[Sequence[str]]) -> list[str]:
    """Each configuration's label: its overrides that not every configuration shares ("(defaults)" if none)."""
    shared = set.intersection(*(set(c) for c in configurations)) if len(configurations) > 1 else set()
    return [" ".join(o for o in c if o not in shared) or "(defaults)" for c in configurations]


def choose(members: Sequence[Member], tuned_keys: Sequence[str], metric: str) -> list[Choice]:
    """Each configuration's best tuning member by validation ``metric`` (configurations in grid order)."""
    lower = lower_is_better(metric)
    choices: dict[tuple, Choice] = {}
    for member in members:
        config = configuration_of(member.overrides, tuned_keys)
        choice = choices.setdefault(tuple(config), Choice(config))
        choice.tried += 1
        if member.status != "completed" or member.run is None:
            continue
        score = selected_validation(member.run, metric).value
        if score is None:
            continue
        choice.completed += 1
        if choice.validation is None or (score < choice.validation if lower else score > choice.validation):
            choice.validation = score
            choice.setting = [o for o in member.overrides if key_of(o) in set(tuned_keys)]
    return list(choices.values())


def curves(members: Sequence[Member], tuned_keys: Sequence[str], metric: str) -> dict[tuple, list[tuple[str, float]]]:
    """Validation ``metric`` against the tuned setting, per configuration (completed members only)."""
    found: dict[tuple, list[tuple[str, float]]] = {}
    for member in members:
        if member.status != "completed" or member.run is None:
            continue
        score = selected_validation(member.run, metric).value
        setting = " ".join(o for o in member.overrides if key_of(o) in set(tuned_keys))
        if score is not None:
            found.setdefault(tuple(configuration_of(member.overrides, tuned_keys)), []).append((setting, score))
    return found


def edge_notes(choices: Sequence[Choice], tuned: Sequence[Tuned]) -> list[str]:
    """One line per configuration whose chosen value is the lowest or highest of an interval searched."""
    notes = []
    for choice, label in zip(choices, distinguishing([c.configuration for c in choices])):
        chosen = dict(kv for o in choice.setting if (kv := override_key(o)))
        for t in tuned:
            if not t.ordered or len(t.values) < 3 or chosen.get(t.key) not in (t.values[0], t.values[-1]):
                continue
            end = "lowest" if chosen[t.key] == t.values[0] else "highest"
            notes.append(f"{label}: {t.key}={chosen[t.key]} is the {end} value searched; its best may lie beyond "
                         f"the range (widen --tune to settle it)")
    return notes


def recorded_edge_notes(data: dict) -> list[str]:
    """``edge_notes`` of a study.json's record (none before its tuning has finished)."""
    tuned = [Tuned.from_record(t) for t in data.get("tuned") or []]
    return edge_notes([Choice(**c) for c in data.get("chosen") or []], tuned)
