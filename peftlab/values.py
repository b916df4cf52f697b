"""Reading the scalar values found in run folders (overrides, configs, metrics).

Shared by the run store's value lookup, ``--where`` filters and compare's
grouping and figures: one parser, so that "8" and 8, "1e-4" and 0.0001 mean
the same thing everywhere. No imports beyond the standard library.
"""

from __future__ import annotations

import json
from typing import Any

#: Returned by :meth:`peftlab.runs.Run.value` for a key the run does not have.
MISSING = object()


def override_key(line: str) -> tuple[str, str] | None:
    """``("method.rank", "8")`` for an overrides.txt line ``method.rank=8`` (or ``+method.rank=8``)."""
    if "=" not in line:
        return None
    key, _, value = line.partition("=")
    key = key.strip().lstrip("+")
    return (key, value.strip()) if key else None


def parse_scalar(text: str) -> Any:
    t = text.strip()
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "'\"":
        return t[1:-1]
    low = t.lower()
    if low in ("null", "none", "~"):
        return None
    if low == "true":
        return True
    if low == "false":
        return False
    try:
        return int(t)
    except ValueError:
        pass
    try:
        return float(t)
    except ValueError:
        return t


def canonical(value: Any) -> str:
    """One string per value, so "8" and 8, "1e-4" and 0.0001 compare equal."""
    if isinstance(value, str):
        value = parse_scalar(value)
        if isinstance(value, str):
            return value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(canonical(v) for v in value) + "]"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def as_number(v: Any) -> float | None:
    """``v`` as a float when it is (or spells) a number, else None (booleans are not numbers)."""
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        p = parse_scalar(v)
        if isinstance(p, (int, float)) and not isinstance(p, bool):
            return float(p)
    return None
