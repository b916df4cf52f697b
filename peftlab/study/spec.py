"""What a study tunes: ``--tune KEY=SPEC`` parsed into the values every configuration tries.

SPEC is Hydra's sweep syntax:

* ``interval(lo,hi)`` — ``--trials`` evenly spaced values from lo to hi (both included);
* ``tag(log,interval(lo,hi))`` — ``--trials`` values evenly spaced in log space (0 < lo);
* ``a,b,c`` or ``choice(a,b,c)`` — exactly these values (``--trials`` does not apply);
* ``range(start,stop[,step])`` — Hydra's range.

Every configuration tries the same values: the tuning budget is equal by construction.
Values are written with 3 significant digits (``2.68e-05``), the bounds as typed, which is what the
runs record; an interval whose bounds are both integers (``method.rank=interval(2,64)``) gives integers.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from peftlab.errors import UserError


@dataclass(frozen=True)
class Tuned:
    """One tuned key: as typed, and the values every configuration tries."""

    key: str
    spec: str
    values: tuple[str, ...]
    log: bool  # spaced (and best plotted) on a log scale

    def record(self) -> dict:
        return {"key": self.key, "spec": self.spec, "values": list(self.values), "log": self.log}

    @property
    def ordered(self) -> bool:
        """Values along a line (an interval or a range), so the first and the last bound the search."""
        return "interval(" in self.spec or "range(" in self.spec

    @classmethod
    def from_record(cls, data: dict) -> "Tuned":
        return cls(str(data["key"]), str(data["spec"]), tuple(str(v) for v in data["values"]), bool(data.get("log")))


def parse_tune(text: str, trials: int) -> Tuned:
    """``KEY=SPEC`` into a :class:`Tuned`; a one-line UserError for anything that cannot be tuned."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    if trials < 1:
        raise UserError(f"--trials {trials} is not allowed: use --trials N with N >= 1 (values tried per configuration)")
    key, sep, spec = str(text).partition("=")
    if not sep or not key.strip() or not spec.strip():
        raise UserError(f"--tune '{text}' is not KEY=SPEC: e.g. --tune 'optimizer.lr=tag(log,interval(1e-5,1e-2))'")
    try:
        value = OverridesParser.create().parse_override(str(text)).value()
    except Exception as exc:  # Hydra's grammar errors: one line naming what was typed
        raise UserError(f"--tune '{text}' cannot be read ({str(exc).splitlines()[0]}): "
                        "e.g. --tune 'optimizer.lr=tag(log,interval(1e-5,1e-2))'") from None
    key = key.strip()
    if key.startswith("~"):
        raise UserError(f"--tune '{text}' deletes {key.lstrip('~')}: --tune takes a key to search, KEY=SPEC")
    key = key.lstrip("+")  # ++key= adds or overrides: for a key that is tuned, the same as key=
    if isinstance(value, IntervalSweep):
        log = "log" in value.tags
        if _integer_bounds(spec):
            return Tuned(key, spec, _integer_interval(text, int(value.start), int(value.end), trials, log), log)
        return Tuned(key, spec, _interval(text, float(value.start), float(value.end), trials, log), log)
    if isinstance(value, (ChoiceSweep, RangeSweep)):
        values = ([str(v) for v in value.list] if isinstance(value, ChoiceSweep)
                  else _range(text, value.start, value.stop, value.step))
        if not values:
            raise UserError(f"--tune '{text}' has no values: give at least one")
        return Tuned(key, spec, tuple(dict.fromkeys(values)), "log" in value.tags)
    raise UserError(f"--tune '{text}' is one value, nothing to tune: give an interval(lo,hi) or a list a,b,c "
                    f"(a fixed value goes with the other overrides)")


def _range(text: str, start: float, stop: float, step: float) -> list[str]:
    """Hydra's ``range(start, stop, step)``: stop excluded, floats allowed (``range(0.1,0.5,0.1)``)."""
    if step == 0:
        raise UserError(f"--tune '{text}' has step 0: give range(start,stop,step) a step other than 0")
    count = max(0, math.ceil((stop - start) / step - 1e-9))  # the tolerance keeps 0.1 * k from adding a point
    points = [start + i * step for i in range(count)]
    if all(isinstance(x, int) for x in (start, stop, step)):
        return [str(int(p)) for p in points]
    return [f"{p:.12g}" for p in points]  # 0.30000000000000004 is 0.3, as typed


def _interval(text: str, lo: float, hi: float, trials: int, log: bool) -> tuple[str, ...]:
    points = _points(text, lo, hi, trials, log)
    # 3 significant digits inside; the bounds as typed, so interval(8,1000.5) ends at 1000.5, not 1e+03
    values = tuple(dict.fromkeys(f"{p:.12g}" if i in (0, len(points) - 1) else f"{p:.3g}" for i, p in enumerate(points)))
    if len(values) < trials:
        raise UserError(f"--tune '{text}' with --trials {trials}: the values repeat at 3 significant digits; "
                        "use fewer trials or a wider range")
    return values


def _integer_interval(text: str, lo: int, hi: int, trials: int, log: bool) -> tuple[str, ...]:
    """``--trials`` distinct integers from lo to hi, both included, evenly spaced (in log space with ``log``)."""
    values = tuple(dict.fromkeys(str(round(p)) for p in _points(text, lo, hi, trials, log)))
    if len(values) < trials:
        raise UserError(f"--tune '{text}' with --trials {trials}: only {len(values)} distinct integers come out of "
                        "the interval; use fewer trials or a wider range")
    return values


def _points(text: str, lo: float, hi: float, trials: int, log: bool) -> list[float]:
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
        raise UserError(f"--tune '{text}' is an empty range: the interval needs lo < hi")
    if log and lo <= 0:
        raise UserError(f"--tune '{text}': a log interval needs 0 < lo; use interval(lo,hi) without tag(log,...)")
    if trials == 1:
        return [math.sqrt(lo * hi) if log else (lo + hi) / 2]
    if log:
        return [math.exp(math.log(lo) + i * (math.log(hi) - math.log(lo)) / (trials - 1)) for i in range(trials)]
    return [lo + i * (hi - lo) / (trials - 1) for i in range(trials)]


def _integer_bounds(spec: str) -> bool:
    """Whether the interval's bounds are typed as integers (``interval(1,8)``): Hydra reads both as floats."""
    bounds = re.search(r"interval\(([^,()]*),([^,()]*)\)", spec)
    return bool(bounds) and all(re.fullmatch(r"\s*[+-]?\d+\s*", b) for b in bounds.groups())
