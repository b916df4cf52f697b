"""``--where`` filters over runs: one syntax and one parser for ``runs``, ``compare`` and ``clean``.

``key OP value`` with OP one of ``= == != < <= > >=``; ``=`` accepts a comma
list (``method=lora,pissa``), the comparisons need a number
(``'method.rank>=8'``). A key is anything :meth:`peftlab.runs.Run.value` knows:
a config key (``method.rank``, ``optimizer.lr``), a group choice (``dataset``),
``status``, ``seed``, ``sweep`` (``name/vN``) or ``sweep.member``. A run without
the key never matches; a key that no run has is a mistake (with a did-you-mean).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from peftlab.errors import UserError, did_you_mean
from peftlab.values import MISSING, as_number, canonical

_WHERE = re.compile(r"^\s*([A-Za-z_+~][\w.\-/]*)\s*(>=|<=|!=|==|=|>|<)\s*(.*?)\s*$")
#: Keys every run answers besides its config (for did-you-mean).
SPECIAL_KEYS = ("seed", "status", "sweep", "sweep.member")


@dataclass(frozen=True)
class Where:
    """One parsed ``--where`` filter: ``matches(run)`` says whether a run passes."""

    expr: str
    key: str
    matches: Callable[[Any], bool]

    def __call__(self, run: Any) -> bool:
        return self.matches(run)


def parse_where(expr: str) -> Where:
    """Parse ``key OP value``; a UserError naming the expression when it cannot be read."""
    m = _WHERE.match(expr)
    if not m:
        raise UserError(f"cannot read --where '{expr}': write key=value, key!=value or key>=number (e.g. method.rank>=8)")
    key, op, raw = m.group(1).lstrip("+"), m.group(2), m.group(3)
    if op in ("<", "<=", ">", ">="):
        return Where(expr, key, _compare_numbers(expr, key, op, raw))
    return Where(expr, key, _match_values(key, op, raw))


def _compare_numbers(expr: str, key: str, op: str, raw: str) -> Callable[[Any], bool]:
    bound = as_number(raw)
    if bound is None:
        raise UserError(f"--where '{expr}': '{op}' needs a number on the right, got '{raw}'")

    def matches(run: Any) -> bool:
        v = as_number(run.value(key))
        if v is None:
            return False
        return {"<": v < bound, "<=": v <= bound, ">": v > bound, ">=": v >= bound}[op]

    return matches


def _match_values(key: str, op: str, raw: str) -> Callable[[Any], bool]:
    wanted = {canonical(x) for x in (raw.split(",") if op in ("=", "==") else [raw])}

    def matches(run: Any) -> bool:
        v = run.value(key)
        if v is MISSING:
            return False
        hit = canonical(v) in wanted
        return hit if op in ("=", "==") else not hit

    return matches


def parse_all(exprs: Iterable[str], runs: Sequence[Any]) -> list[Where]:
    """Parse every filter and check that some run has its key (else a UserError with a did-you-mean)."""
    filters = [parse_where(e) for e in exprs]
    for f in filters:
        if runs and all(r.value(f.key) is MISSING for r in runs):
            known = sorted({k for r in runs[:20] for k in r.config_keys()} | set(SPECIAL_KEYS))
            raise UserError(f"--where '{f.expr}': no run has key '{f.key}'{did_you_mean(f.key, known)}")
    return filters


def filter_runs(runs: Sequence[Any], exprs: Iterable[str]) -> list[Any]:
    """The runs that pass every ``--where`` filter, in their order."""
    filters = parse_all(exprs, runs)
    return [r for r in runs if all(f(r) for f in filters)]
