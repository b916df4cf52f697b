"""Grouping runs into configuration rows, marking the best, sorting.

A *configuration* is what the user chose apart from the seed: the values of
every override key (``method=pissa``, ``method.rank=8``, ...) and of the
config-group choices, read back from each run's resolved config so that an
explicit ``method=lora`` and the default LoRA group together. Seeds of the same
configuration form one row (mean, sample standard deviation, n). The *swept
parameters* are the keys whose value differs between rows; they become the
leading columns.

Rows are ranked and marked by validation, never by test: each run contributes
the validation metric of the checkpoint it keeps (see
:mod:`~peftlab.compare.selection`), and the test metric of that checkpoint is
only reported. Choosing on test would make the chosen row's test number an
optimistic estimate.

Noise rule: the best row has the best mean validation metric (lower is better
for metric names containing "loss", "perplexity", "ppl" or "error"). Another
row is marked "≈ best (within noise)" when ``|mean_best - mean_row| <=
std_best + std_row`` on that validation metric, with std the sample standard
deviation over seeds (0 for a single seed), i.e. when the one-standard-deviation
bands of the two rows overlap. This is deliberately simple and visible in the
numbers of the table; it is a hint to run more seeds, not a significance test.
A row with no validation value is shown but never marked.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
import dataclasses
from dataclasses import dataclass
from typing import Any

from peftlab.runs import Run
from peftlab.compare.selection import selected_validation
from peftlab.compare.significance import finite, hedges_g, holm, mean_ci, welch_p
from peftlab.values import MISSING, as_number, canonical, override_key
from peftlab.errors import UserError, did_you_mean
from peftlab.metrics import LOWER_IS_BETTER, lower_is_better, regularizer_terms  # noqa: F401  (LOWER_IS_BETTER: part of compare's API)

#: Override keys that never distinguish configurations.
IGNORED_KEYS = frozenset({"seed", "name", "runs_dir", "resume"})
NOISE_RULE = "|mean_best - mean_row| <= std_best + std_row (sample std over seeds)"
BEST_MARK = "★ best"
NOISE_MARK = "≈ best (within noise)"
DEFAULT_METRIC = "accuracy"


def default_metric(records: Sequence[Run]) -> str:
    """The most common key metric (summary ``metric`` / ``trainer.metric``) among the runs, else "accuracy"."""
    names = Counter(m for r in records if (m := r.metric_name))
    return names.most_common(1)[0][0] if names else DEFAULT_METRIC


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation of the finite numbers in ``values`` (std None below two)."""
    vals = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    if not vals:
        return None, None
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)
    return mean, math.sqrt(var)


def _mean(values: Iterable[Any]) -> float | None:
    return mean_std(list(values))[0]


@dataclass
class Row:
    """One configuration: its swept-parameter values and statistics over its seeds."""

    key: tuple
    params: dict[str, str]  # swept parameter -> value (same keys in every row)
    records: list[Run]
    metric: str
    higher_is_better: bool
    test_mean: float | None = None  # test at each run's selected checkpoint: reported, never ranked on
    test_std: float | None = None
    n: int = 0  # runs (seeds) in this configuration
    val_mean: float | None = None  # validation at each run's selected checkpoint: the ranking key
    val_std: float | None = None
    trainable_params: float | None = None
    total_params: float | None = None
    wall_time_s: float | None = None
    tokens_per_s: float | None = None
    peak_memory_mb: float | None = None
    intruders: float | None = None
    regularizers: dict[str, float | None] = dataclasses.field(default_factory=dict)  # reg/<name>: mean raw value
    learning_rates: list[float] = dataclasses.field(default_factory=list)  # the distinct optimizer.lr of its runs
    test_values: list[float] = dataclasses.field(default_factory=list)  # one per run that has it
    test_ci: tuple[float, float] | None = None  # 95% confidence interval of the test mean (n >= 2)
    p_vs_best: float | None = None  # Welch's test of the test values against the best row's
    p_holm_vs_best: float | None = None  # p_vs_best adjusted for the table's number of such tests (Holm)
    g_vs_best: float | None = None  # Hedges' g, this row minus the best row, on test
    best: bool = False
    within_noise: bool = False

    @property
    def mark(self) -> str:
        return BEST_MARK if self.best else NOISE_MARK if self.within_noise else ""

    @property
    def label(self) -> str:
        """``method=lora method.rank=8`` (or the config's identity when nothing is swept)."""
        if self.params:
            return " ".join(f"{k}={v}" for k, v in self.params.items())
        return " ".join(f"{k}={v}" for k, v in self.key) or "(defaults)"

    @property
    def seeds(self) -> list:
        return [r.seed for r in self.records]


def _natural(v: str) -> tuple:
    n = as_number(v)
    return (0, n, "") if n is not None else (1, 0.0, str(v))


_SORT_KEYS = {
    "metric": "val_mean",  # the ranking key; "test" orders by the reported test metric only
    "test": "test_mean",
    "val": "val_mean",
    "validation": "val_mean",
    "n": "n",
    "params": "trainable_params",
    "trainable": "trainable_params",
    "trainable_params": "trainable_params",
    "time": "wall_time_s",
    "wall_time": "wall_time_s",
    "wall_time_s": "wall_time_s",
    "speed": "tokens_per_s",
    "tokens_per_s": "tokens_per_s",
    "memory": "peak_memory_mb",
    "peak_memory_mb": "peak_memory_mb",
    "intruders": "intruders",
}


def sort_rows(rows: list[Row], sort: str | None) -> list[Row]:
    """Sort rows in place-free fashion.

    None keeps the grid order (swept parameters, numbers numerically).
    ``metric`` (= ``val``) puts the best validation first, the ranking order;
    ``test`` orders by the reported test metric (a reporting order: the marks
    still come from validation); ``params``, ``time``,
    ``speed``, ``memory``, ``intruders``, ``n`` sort ascending; a swept
    parameter name sorts by its values. A leading ``-`` reverses.
    """
    if not sort:
        return sorted(rows, key=lambda r: tuple(_natural(v) for v in r.params.values()))
    reverse = sort.startswith("-")
    name = sort.lstrip("-")
    if name in _SORT_KEYS:
        attr = _SORT_KEYS[name]
        best_first = attr in ("test_mean", "val_mean") and rows and rows[0].higher_is_better
        present = [r for r in rows if getattr(r, attr) is not None]
        absent = [r for r in rows if getattr(r, attr) is None]
        present.sort(key=lambda r: getattr(r, attr), reverse=bool(best_first) != reverse)
        return present + absent
    params = rows[0].params if rows else {}
    if name in params:
        return sorted(rows, key=lambda r: _natural(r.params[name]), reverse=reverse)
    choices = list(_SORT_KEYS) + list(params)
    raise UserError(f"cannot sort by '{name}'{did_you_mean(name, choices)}: choose one of {', '.join(choices)}")


def _split(rec: Run, name: str) -> dict:
    """The ``name`` section of the run's summary.json (``test``, ``best_validation``, ...), or {}."""
    v = rec.summary.get(name)
    return v if isinstance(v, dict) else {}


def _config_keys(records: Sequence[Run]) -> list[str]:
    """The configuration keys: every override key (minus the seed & co.) plus the group choices."""
    keys: list[str] = []
    for r in records:
        for line in r.overrides():
            kv = override_key(line)
            if kv and kv[0] not in IGNORED_KEYS and not kv[0].startswith(("hydra.", "~")) and kv[0] not in keys:
                keys.append(kv[0])
    for r in records:
        for k in r.choices:
            if k not in keys and k not in IGNORED_KEYS and not k.startswith("hydra"):
                keys.append(k)
    return keys


def _check_metric(records: Sequence[Run], metric: str) -> None:
    """A :class:`UserError` listing the available metrics when no run reports ``metric``."""
    sections = ("test", "best_validation", "final_validation")
    if any(metric in _split(r, s) for r in records for s in sections) or not any(r.summary for r in records):
        return
    avail = sorted({k for r in records for s in sections for k in _split(r, s) if k not in ("step", "examples")})
    raise UserError(
        f"no run reports metric '{metric}'{did_you_mean(metric, avail)}: "
        f"available: {', '.join(avail) or 'none (no summary.json)'}"
    )


def _configurations(records: Sequence[Run]) -> tuple[dict[tuple, list[Run]], list[str]]:
    """The runs grouped by configuration (seeds pooled), and the swept keys (those that differ)."""
    keys = _config_keys(records)

    def ident(rec: Run) -> tuple:
        return tuple((k, "-" if (v := rec.value(k)) is MISSING else canonical(v)) for k in keys)

    groups: dict[tuple, list[Run]] = {}
    for r in records:
        groups.setdefault(ident(r), []).append(r)
    swept = [k for i, k in enumerate(keys) if len({g[i][1] for g in groups}) > 1]
    return groups, swept


def _intruders(rec: Run) -> Any:
    model = rec.analysis.get("model") if rec.analysis else None
    return model.get("intruders") if isinstance(model, dict) else None


def _regularizers(recs: Sequence[Run]) -> dict[str, float | None]:
    """Each regularizer term's raw value on the last training line, averaged over the runs that log it."""
    per_run = [regularizer_terms(r.metrics()) for r in recs]
    names = list(dict.fromkeys(k for terms in per_run for k in terms))
    return {k: _mean(terms.get(k) for terms in per_run) for k in names}


def _learning_rates(recs: Sequence[Run]) -> list[float]:
    """The distinct learning rates the runs trained at (the resolved ``optimizer.lr``: methods differ in default)."""
    return sorted({v for v in (as_number(r.value("optimizer.lr")) for r in recs) if v is not None})


def _row(key: tuple, recs: list[Run], swept: Sequence[str], metric: str) -> Row:
    """The statistics of one configuration over its seeds (marks are set later, by :func:`mark_best`)."""
    kd = dict(key)
    tests = finite([_split(r, "test").get(metric) for r in recs])
    tm, ts = mean_std(tests)
    vm, vs = mean_std([selected_validation(r, metric).value for r in recs])
    return Row(
        key=key,
        params={k: kd[k] for k in swept},
        records=recs,
        metric=metric,
        higher_is_better=not lower_is_better(metric),
        test_mean=tm,
        test_std=ts,
        n=len(recs),
        val_mean=vm,
        val_std=vs,
        trainable_params=_mean(r.summary.get("trainable_params") for r in recs),
        total_params=_mean(r.summary.get("total_params") for r in recs),
        wall_time_s=_mean(r.summary.get("wall_time_s") for r in recs),
        tokens_per_s=_mean(r.summary.get("tokens_per_s") for r in recs),
        peak_memory_mb=_mean(r.summary.get("peak_memory_mb") for r in recs),
        intruders=_mean(_intruders(r) for r in recs),
        regularizers=_regularizers(recs),
        learning_rates=_learning_rates(recs),
        test_values=tests,
        test_ci=mean_ci(tests),
    )


def group(
    records: Sequence[Run], metric: str | None = None, sort: str | None = None
) -> list[Row]:
    """One :class:`Row` per configuration (seeds pooled), with best / within-noise marks.

    ``metric`` defaults to the runs' ``trainer.metric``. Validation values (the
    ranking key) come from each run's selected checkpoint
    (:func:`~peftlab.compare.selection.selected_validation`), test values from
    ``summary["test"][metric]``. An unknown metric is a :class:`UserError`
    listing the available ones.
    """
    records = list(records)
    if not records:
        return []
    metric = metric or default_metric(records)
    _check_metric(records, metric)
    groups, swept = _configurations(records)
    rows = [_row(key, recs, swept, metric) for key, recs in groups.items()]
    mark_best(rows)
    compare_with_best(rows)
    return sort_rows(rows, sort)


def mark_best(rows: Sequence[Row]) -> None:
    """Mark the best row and the rows within noise of it, by validation (see the module docstring)."""
    ranked = [r for r in rows if r.val_mean is not None]
    for r in rows:
        r.best = r.within_noise = False
    if not ranked:
        return
    if all_tie(rows):
        return  # nothing is best when nothing differs (the notes say so)
    pick = max if ranked[0].higher_is_better else min
    best = pick(ranked, key=lambda r: r.val_mean)
    best.best = True
    for r in ranked:
        if r is not best:
            gap = abs(best.val_mean - r.val_mean)
            r.within_noise = gap <= (best.val_std or 0.0) + (r.val_std or 0.0)


def all_tie(rows: Sequence[Row]) -> bool:
    """True when two or more configurations are ranked and all have the same mean validation metric."""
    ranked = [r.val_mean for r in rows if r.val_mean is not None]
    return len(ranked) > 1 and max(ranked) - min(ranked) <= 1e-12 * max(1.0, abs(ranked[0]))


def compare_with_best(rows: Sequence[Row]) -> None:
    """Each other row's test values against the best row's (chosen on validation).

    Welch's p, its Holm adjustment over the rows of this table, and Hedges' g.
    """
    best = next((r for r in rows if r.best), None)
    for r in rows:
        r.p_vs_best = r.g_vs_best = None
        if best is not None and r is not best:
            r.p_vs_best = welch_p(r.test_values, best.test_values)
            r.g_vs_best = hedges_g(r.test_values, best.test_values)
    for r, adjusted in zip(rows, holm([r.p_vs_best for r in rows])):
        r.p_holm_vs_best = adjusted
