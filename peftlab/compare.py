"""Compare runs: tables, plots and a self-contained HTML report.

Reads run folders only (config.yaml, overrides.txt, meta.json, summary.json,
metrics.jsonl, analysis.json) and never imports torch, so ``peftlab compare``
starts fast and works on a machine that only holds copied run folders.

The pipeline::

    records = collect(paths)                       # runs, sweeps, parent folders, globs
    kept, left_out = select(records, where=[...])  # completed runs, --where filters
    rows = group(kept, metric)                     # one row per configuration, seeds pooled
    render_table(rows) / to_markdown / to_csv / to_json / plot / html_report

A *configuration* is what the user chose apart from the seed: the values of
every override key (``method=pissa``, ``method.rank=8``, ...) and of the
config-group choices, read back from each run's resolved config so that an
explicit ``method=lora`` and the default LoRA group together. Seeds of the same
configuration form one row (mean, sample standard deviation, n). The *swept
parameters* are the keys whose value differs between rows; they become the
leading columns.

Noise rule: the best row has the best mean test metric (lower is better for
metric names containing "loss", "perplexity", "ppl" or "error"). Another row is
marked "≈ best (within noise)" when ``|mean_best - mean_row| <= std_best +
std_row``, with std the sample standard deviation over seeds (0 for a single
seed), i.e. when the one-standard-deviation bands of the two rows overlap. This
is deliberately simple and visible in the numbers of the table; it is a hint to
run more seeds, not a significance test.
"""

from __future__ import annotations

import base64
import csv
import glob as _glob
import html
import io
import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftlab.errors import UserError, did_you_mean

#: Override keys that never distinguish configurations.
IGNORED_KEYS = frozenset({"seed", "name", "runs_dir", "resume"})
#: Substrings of metric names for which lower is better.
LOWER_IS_BETTER = ("loss", "perplexity", "ppl", "error")
NOISE_RULE = "|mean_best - mean_row| <= std_best + std_row (sample std over seeds)"
BEST_MARK = "★ best"
NOISE_MARK = "≈ best (within noise)"
DEFAULT_METRIC = "accuracy"
_MISSING = object()


# ================================================================ records ===
def _read_json(path: Path, default: Any = None) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return {}
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        data = yaml.load(text, Loader=loader)  # a safe loader (C-accelerated when available)
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _override_key(line: str) -> tuple[str, str] | None:
    if "=" not in line:
        return None
    key, _, value = line.partition("=")
    key = key.strip().lstrip("+")
    return (key, value.strip()) if key else None


def _parse_scalar(text: str) -> Any:
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
        value = _parse_scalar(value)
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


@dataclass
class RunRecord:
    """One run folder as read from disk (metrics.jsonl is read only when plotted)."""

    path: Path
    config: dict
    overrides: list[str]
    meta: dict
    summary: dict
    analysis: dict | None = None
    _metrics: list[dict] | None = field(default=None, repr=False)

    @classmethod
    def load(cls, path: Path) -> RunRecord:
        path = Path(path)
        try:
            lines = (path / "overrides.txt").read_text(encoding="utf-8").splitlines()
        except OSError:
            lines = []
        overrides = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
        analysis = _read_json(path / "analysis.json") if (path / "analysis.json").is_file() else None
        return cls(
            path=path,
            config=_read_yaml(path / "config.yaml"),
            overrides=overrides,
            meta=_read_json(path / "meta.json", {}) or {},
            summary=_read_json(path / "summary.json", {}) or {},
            analysis=analysis if isinstance(analysis, dict) else None,
        )

    # -- identity ----------------------------------------------------------------
    @property
    def status(self) -> str:
        return str(self.meta.get("status", "unknown"))

    @property
    def seed(self) -> Any:
        s = self.meta.get("seed", self.config.get("seed"))
        return s

    @property
    def label(self) -> str:
        """``<name>/<version>`` (the last two path components)."""
        return f"{self.path.parent.name}/{self.path.name}"

    @property
    def choices(self) -> dict:
        c = self.meta.get("choices")
        return c if isinstance(c, dict) else {}

    def override_map(self) -> dict[str, str]:
        out = {}
        for line in self.overrides:
            kv = _override_key(line)
            if kv:
                out[kv[0]] = kv[1]
        return out

    def value(self, key: str) -> Any:
        """The run's value for ``key``: group choice, resolved config value, or override; else _MISSING."""
        if key == "status":
            return self.status
        if key == "seed":
            return self.seed
        if key in self.choices:
            return self.choices[key]
        node: Any = self.config
        found = True
        for part in key.split("."):
            if isinstance(node, dict) and part in node:
                node = node[part]
            else:
                found = False
                break
        if found and not isinstance(node, dict):
            return node
        ov = self.override_map()
        if key in ov:
            return _parse_scalar(ov[key])
        if found:  # a config group without a recorded choice: its _target_ names it
            return node.get("_target_", "").rsplit(".", 1)[-1] or _MISSING
        return _MISSING

    def config_keys(self) -> list[str]:
        """Every dotted key of the resolved config (for did-you-mean in --where)."""
        out: list[str] = list(self.choices)

        def walk(node: dict, prefix: str) -> None:
            for k, v in node.items():
                key = f"{prefix}{k}"
                out.append(key)
                if isinstance(v, dict):
                    walk(v, key + ".")

        walk(self.config, "")
        return out

    @property
    def metric_name(self) -> str | None:
        """The run's key metric: summary.json ``metric``, else config ``trainer.metric``."""
        if self.summary.get("metric"):
            return str(self.summary["metric"])
        trainer = self.config.get("trainer")
        m = trainer.get("metric") if isinstance(trainer, dict) else None
        return str(m) if m else None

    def metrics(self) -> list[dict]:
        """The lines of metrics.jsonl (malformed lines, e.g. a partial last line, are skipped)."""
        if self._metrics is None:
            rows: list[dict] = []
            try:
                with open(self.path / "metrics.jsonl", encoding="utf-8") as f:
                    for line in f:
                        line = line.strip()
                        if not line:
                            continue
                        try:
                            obj = json.loads(line)
                        except ValueError:
                            continue
                        if isinstance(obj, dict):
                            rows.append(obj)
            except OSError:
                pass
            self._metrics = rows
        return self._metrics


# ================================================================ collect ===
def _is_run(d: Path) -> bool:
    return (d / "meta.json").is_file() and not (d / "sweep.json").is_file()


def _walk_runs(root: Path) -> list[Path]:
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        if "meta.json" in filenames and "sweep.json" not in filenames:
            found.append(Path(dirpath))
            dirnames[:] = []  # a run folder holds no runs (skip adapter/, checkpoints/)
        else:
            dirnames.sort()
    return found


def _sweep_members(sweep_dir: Path, notes: list[str] | None) -> list[Path]:
    data = _read_json(sweep_dir / "sweep.json", {}) or {}
    members = data.get("members") or []
    runs_root = sweep_dir.parents[2] if len(sweep_dir.parents) > 2 else sweep_dir
    out: list[Path] = []
    not_started = missing = 0
    for m in members:
        run = m.get("run") if isinstance(m, dict) else None
        if not run:
            not_started += 1
            continue
        p = Path(run)
        candidates = [p] if p.is_absolute() else [p, sweep_dir / p, runs_root / p, runs_root.parent / p]
        hit = next((c for c in candidates if _is_run(c)), None)
        if hit is None:
            missing += 1
        else:
            out.append(hit)
    if notes is not None:
        if not_started:
            notes.append(f"{not_started} member(s) of sweep {sweep_dir} have no run folder yet")
        if missing:
            notes.append(f"{missing} member run folder(s) of sweep {sweep_dir} were not found")
    return out


def _runs_dir() -> Path:
    return Path(os.environ.get("PEFTLAB_RUNS_DIR", "runs"))


def collect(paths: Sequence[str], notes: list[str] | None = None) -> list[RunRecord]:
    """Load the runs named by ``paths``, deduplicated, in the order found.

    Each path may be a run folder (holds meta.json), a sweep folder (holds
    sweep.json; its members' run folders are read), any folder containing run
    folders (searched recursively), a glob, or ``<name>[/<version>]`` under the
    runs directory (``$PEFTLAB_RUNS_DIR`` or ``runs``). A path that matches
    nothing is a :class:`UserError`. Remarks (sweep members without a run
    folder, ...) are appended to ``notes`` when given.
    """
    dirs: list[Path] = []
    for raw in paths:
        text = str(raw)
        if any(ch in text for ch in "*?["):
            matches = sorted(_glob.glob(os.path.expanduser(text), recursive=True))
            targets = [Path(m) for m in matches if Path(m).is_dir()]
            if not targets:
                raise UserError(f"no run folders match '{text}'")
        else:
            p = Path(os.path.expanduser(text))
            if not p.exists() and (_runs_dir() / p).exists():
                p = _runs_dir() / p
            if not p.is_dir():
                raise UserError(f"no such run, sweep or folder: {text}")
            targets = [p]
        for t in targets:
            if _is_run(t):
                dirs.append(t)
            elif (t / "sweep.json").is_file():
                dirs.extend(_sweep_members(t, notes))
                dirs.extend(_walk_runs(t))
            else:
                dirs.extend(_walk_runs(t))
    seen: set[str] = set()
    records: list[RunRecord] = []
    for d in dirs:
        key = os.path.realpath(d)
        if key in seen:
            continue
        seen.add(key)
        records.append(RunRecord.load(d))
    return records


# ================================================================= select ===
_WHERE = re.compile(r"^\s*([A-Za-z_+~][\w.\-/]*)\s*(>=|<=|!=|==|=|>|<)\s*(.*?)\s*$")


def _as_number(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        p = _parse_scalar(v)
        if isinstance(p, (int, float)) and not isinstance(p, bool):
            return float(p)
    return None


def parse_where(expr: str):
    """Parse ``key OP value`` (OP: = == != < <= > >=); ``=`` accepts a comma list.

    Returns a predicate over :class:`RunRecord`; a run without the key never matches.
    """
    m = _WHERE.match(expr)
    if not m:
        raise UserError(f"cannot read --where '{expr}': write key=value, key!=value or key>=number (e.g. method.rank>=8)")
    key, op, raw = m.group(1).lstrip("+"), m.group(2), m.group(3)
    if op in ("<", "<=", ">", ">="):
        bound = _as_number(raw)
        if bound is None:
            raise UserError(f"--where '{expr}': '{op}' needs a number on the right, got '{raw}'")

        def pred(rec: RunRecord) -> bool:
            v = _as_number(rec.value(key))
            if v is None:
                return False
            return {"<": v < bound, "<=": v <= bound, ">": v > bound, ">=": v >= bound}[op]

    else:
        wanted = {canonical(x) for x in (raw.split(",") if op in ("=", "==") else [raw])}

        def pred(rec: RunRecord) -> bool:
            v = rec.value(key)
            if v is _MISSING:
                return False
            hit = canonical(v) in wanted
            return hit if op in ("=", "==") else not hit

    pred.key = key  # type: ignore[attr-defined]
    pred.expr = expr  # type: ignore[attr-defined]
    return pred


def select(
    records: Sequence[RunRecord], where: Iterable[str] = (), include_all: bool = False
) -> tuple[list[RunRecord], list[RunRecord]]:
    """Apply ``--where`` filters and keep completed runs (all runs with ``include_all``).

    Returns ``(kept, left_out)`` where ``left_out`` are the runs that passed the
    filters but are not completed (for a footnote).
    """
    preds = [parse_where(w) for w in where]
    for p in preds:
        if records and all(r.value(p.key) is _MISSING for r in records):
            known = sorted({k for r in records[:20] for k in r.config_keys()} | {"seed", "status"})
            raise UserError(f"--where '{p.expr}': no run has key '{p.key}'{did_you_mean(p.key, known)}")
    matched = [r for r in records if all(p(r) for p in preds)]
    if include_all:
        return matched, []
    kept = [r for r in matched if r.status == "completed"]
    return kept, [r for r in matched if r.status != "completed"]


def left_out_note(left_out: Sequence[RunRecord]) -> str | None:
    """``"3 runs not completed (2 running, 1 failed) are left out; --all includes them"``."""
    if not left_out:
        return None
    counts = Counter(r.status for r in left_out)
    detail = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    n = len(left_out)
    return f"{n} run{'s' if n != 1 else ''} not completed ({detail}) left out; --all includes them"


# ================================================================== group ===
def lower_is_better(metric: str) -> bool:
    m = metric.lower()
    return any(s in m for s in LOWER_IS_BETTER)


def default_metric(records: Sequence[RunRecord]) -> str:
    """The most common key metric (summary ``metric`` / ``trainer.metric``) among the runs, else "accuracy"."""
    names = Counter(m for r in records if (m := r.metric_name))
    return names.most_common(1)[0][0] if names else DEFAULT_METRIC


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    vals = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    if not vals:
        return None, None
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)
    return mean, math.sqrt(var)


def _mean(values: Iterable[Any]) -> float | None:
    return _mean_std(list(values))[0]


@dataclass
class Row:
    """One configuration: its swept-parameter values and statistics over its seeds."""

    key: tuple
    params: dict[str, str]  # swept parameter -> value (same keys in every row)
    records: list[RunRecord]
    metric: str
    higher_is_better: bool
    test_mean: float | None = None
    test_std: float | None = None
    n: int = 0  # runs (seeds) in this configuration
    val_mean: float | None = None
    val_std: float | None = None
    trainable_params: float | None = None
    total_params: float | None = None
    wall_time_s: float | None = None
    tokens_per_s: float | None = None
    peak_memory_mb: float | None = None
    intruders: float | None = None
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
    n = _as_number(v)
    return (0, n, "") if n is not None else (1, 0.0, str(v))


_SORT_KEYS = {
    "metric": "test_mean",
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
    ``metric``/``test``/``val`` put the best first; ``params``, ``time``,
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


def group(
    records: Sequence[RunRecord], metric: str | None = None, sort: str | None = None
) -> list[Row]:
    """One :class:`Row` per configuration (seeds pooled), with best / within-noise marks.

    ``metric`` defaults to the runs' ``trainer.metric``. Test values come from
    ``summary["test"][metric]``, validation from ``summary["best_validation"]``.
    An unknown metric is a :class:`UserError` listing the available ones.
    """
    records = list(records)
    if not records:
        return []
    metric = metric or default_metric(records)
    hib = not lower_is_better(metric)

    def split(rec: RunRecord, name: str) -> dict:
        v = rec.summary.get(name)
        return v if isinstance(v, dict) else {}

    has_metric = any(metric in split(r, s) for r in records for s in ("test", "best_validation", "final_validation"))
    if not has_metric and any(r.summary for r in records):
        avail = sorted({k for r in records for s in ("test", "best_validation") for k in split(r, s) if k != "step"})
        raise UserError(
            f"no run reports metric '{metric}'{did_you_mean(metric, avail)}: "
            f"available: {', '.join(avail) or 'none (no summary.json)'}"
        )

    # The configuration keys: every override key (minus the seed & co.) plus the group choices.
    keys: list[str] = []
    for r in records:
        for line in r.overrides:
            kv = _override_key(line)
            if kv and kv[0] not in IGNORED_KEYS and not kv[0].startswith(("hydra.", "~")) and kv[0] not in keys:
                keys.append(kv[0])
    for r in records:
        for k in r.choices:
            if k not in keys and k not in IGNORED_KEYS and not k.startswith("hydra"):
                keys.append(k)

    def ident(rec: RunRecord) -> tuple:
        out = []
        for k in keys:
            v = rec.value(k)
            out.append((k, "-" if v is _MISSING else canonical(v)))
        return tuple(out)

    groups: dict[tuple, list[RunRecord]] = {}
    for r in records:
        groups.setdefault(ident(r), []).append(r)

    swept = [k for i, k in enumerate(keys) if len({g[i][1] for g in groups}) > 1]
    rows: list[Row] = []
    for key, recs in groups.items():
        kd = dict(key)
        test_vals = [split(r, "test").get(metric) for r in recs]
        tm, ts = _mean_std(test_vals)
        vm, vs = _mean_std([split(r, "best_validation").get(metric) for r in recs])
        intr = [r.analysis["model"].get("intruders") for r in recs if r.analysis and isinstance(r.analysis.get("model"), dict)]
        rows.append(
            Row(
                key=key,
                params={k: kd[k] for k in swept},
                records=recs,
                metric=metric,
                higher_is_better=hib,
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
                intruders=_mean(intr),
            )
        )
    mark_best(rows)
    return sort_rows(rows, sort)


def mark_best(rows: Sequence[Row]) -> None:
    """Mark the best row and the rows within noise of it (see the module docstring)."""
    scored = [r for r in rows if r.test_mean is not None]
    for r in rows:
        r.best = r.within_noise = False
    if not scored:
        return
    pick = max if scored[0].higher_is_better else min
    best = pick(scored, key=lambda r: r.test_mean)
    best.best = True
    for r in scored:
        if r is not best:
            gap = abs(best.test_mean - r.test_mean)
            r.within_noise = gap <= (best.test_std or 0.0) + (r.test_std or 0.0)


# ================================================================ formats ===
def _g(v: float | None, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}g}"


def fmt_stat(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    if std is None:
        return _g(mean)
    return f"{_g(mean)} ± {_g(std, 2)}"


def fmt_count(v: float | None) -> str:
    if v is None:
        return "-"
    a = abs(v)
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if a >= div:
            return f"{v / div:.3g}{suffix}"
    return f"{v:.3g}" if not float(v).is_integer() else str(int(v))


def fmt_time(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 60:
        return f"{s:.3g} s"
    m, sec = divmod(round(s), 60)
    if m < 60:
        return f"{m}m{sec:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


def _columns(rows: Sequence[Row]) -> list[tuple[str, Any]]:
    """(header, row -> display string) for the human formats (table, markdown, html)."""
    if not rows:
        return []
    metric = rows[0].metric
    cols: list[tuple[str, Any]] = []
    params = list(rows[0].params)
    if params:
        cols += [(p, (lambda r, p=p: r.params[p])) for p in params]
    else:
        cols.append(("config", lambda r: r.label))
    cols += [
        (f"test {metric}", lambda r: fmt_stat(r.test_mean, r.test_std)),
        ("n", lambda r: str(r.n)),
        (f"best val {metric}", lambda r: fmt_stat(r.val_mean, r.val_std)),
        ("trainable", lambda r: fmt_count(r.trainable_params)),
        ("wall time", lambda r: fmt_time(r.wall_time_s)),
        ("tokens/s", lambda r: fmt_count(r.tokens_per_s)),
        ("peak MB", lambda r: fmt_count(r.peak_memory_mb)),
    ]
    if any(r.intruders is not None for r in rows):
        cols.append(("intruders", lambda r: "-" if r.intruders is None else f"{r.intruders:.3g}"))
    cols.append(("", lambda r: r.mark))
    return cols


def caption(rows: Sequence[Row]) -> str:
    if not rows:
        return ""
    r = rows[0]
    direction = "higher" if r.higher_is_better else "lower"
    return (
        f"test {r.metric}: mean ± sample std over seeds ({direction} is better). "
        f"{NOISE_MARK}: {NOISE_RULE}."
    )


#: Columns dropped first (in this order) when the table is wider than the console.
_DROP_ORDER = ("peak MB", "tokens/s", "wall time", "trainable", "intruders", "best val")


def render_table(rows: Sequence[Row], title: str | None = None, width: int | None = None):
    """A rich Table of the rows (print it with a rich Console).

    The swept parameters and the test metric never wrap; in the mark column a
    row within noise of the best shows "≈ best" (the caption states the rule).
    With ``width`` (the console width), secondary columns that do not fit are
    left out and the caption names them.
    """
    from rich import box
    from rich.table import Table

    cols = _columns(rows)
    n_left = max(len(rows[0].params), 1) if rows else 0
    cells = [[f(r) for _, f in cols] for r in rows]
    for r, row_cells in zip(rows, cells):
        if r.within_noise:
            row_cells[-1] = "≈ best"

    def need(i: int) -> int:
        return max([len(cols[i][0])] + [len(c[i]) for c in cells])

    keep = list(range(len(cols)))
    hidden: list[str] = []
    if width:
        for prefix in _DROP_ORDER:
            if sum(need(i) for i in keep) + 2 * (len(keep) - 1) <= width:
                break
            for i in list(keep):
                if i >= n_left and cols[i][0].startswith(prefix):
                    keep.remove(i)
                    hidden.append(cols[i][0])
    cap = caption(rows)
    if hidden:
        cap += f" Hidden at this width: {', '.join(hidden)} (widen the terminal or use --format markdown)."
    table = Table(
        title=title, title_justify="left", caption=cap, caption_justify="left",
        box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True,
    )
    for i in keep:
        head = cols[i][0]
        if i < n_left:
            table.add_column(head, style="cyan", no_wrap=True, min_width=min(need(i), 40))
        elif head == "":
            table.add_column(head, style="bold green", no_wrap=True)
        else:
            table.add_column(head, justify="right", no_wrap=True, min_width=need(i))
    for r, row_cells in zip(rows, cells):
        table.add_row(*(row_cells[i] for i in keep), style="bold" if r.best else None)
    return table


def to_markdown(rows: Sequence[Row]) -> str:
    """A GitHub-flavoured Markdown table with the noise rule as a note below."""
    cols = _columns(rows)
    if not cols:
        return ""

    def cell(s: str) -> str:
        return s.replace("|", "\\|")

    lines = [
        "| " + " | ".join(cell(h) for h, _ in cols) + " |",
        "|" + "|".join("---" if i < max(len(rows[0].params), 1) else "---:" for i in range(len(cols))) + "|",
    ]
    lines += ["| " + " | ".join(cell(f(r)) for _, f in cols) + " |" for r in rows]
    lines += ["", f"_{caption(rows)}_", ""]
    return "\n".join(lines)


def _row_dict(r: Row) -> dict:
    return {
        **r.params,
        "config": r.label,
        "metric": r.metric,
        "test_mean": r.test_mean,
        "test_std": r.test_std,
        "n": r.n,
        "val_mean": r.val_mean,
        "val_std": r.val_std,
        "trainable_params": None if r.trainable_params is None else round(r.trainable_params),
        "total_params": None if r.total_params is None else round(r.total_params),
        "wall_time_s": r.wall_time_s,
        "tokens_per_s": r.tokens_per_s,
        "peak_memory_mb": r.peak_memory_mb,
        "intruders": r.intruders,
        "best": r.best,
        "within_noise": r.within_noise,
        "mark": r.mark,
    }


def to_csv(rows: Sequence[Row]) -> str:
    """CSV with raw numbers: swept parameters, then statistics (empty cell = not available)."""
    if not rows:
        return ""
    dicts = [_row_dict(r) for r in rows]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(dicts[0]), lineterminator="\n")
    w.writeheader()
    for d in dicts:
        w.writerow({k: ("" if v is None else v) for k, v in d.items()})
    return buf.getvalue()


def to_json(rows: Sequence[Row]) -> str:
    """JSON: metric, direction, noise rule, swept parameters and rows (with seeds and run paths)."""
    out = {
        "metric": rows[0].metric if rows else None,
        "higher_is_better": rows[0].higher_is_better if rows else None,
        "noise_rule": NOISE_RULE,
        "swept": list(rows[0].params) if rows else [],
        "rows": [
            {**_row_dict(r), "seeds": r.seeds, "runs": [str(x.path) for x in r.records]} for r in rows
        ],
    }
    return json.dumps(out, indent=2, default=str)


# ================================================================== plots ===
def _train_curve(records: Sequence[RunRecord], key: str = "loss", split: str = "train"):
    """Steps, mean and std over seeds of ``key`` on ``split`` lines (std 0 where one seed)."""
    by_step: dict[float, list[float]] = {}
    for rec in records:
        for line in rec.metrics():
            if line.get("split") != split:
                continue
            step, v = _as_number(line.get("step")), _as_number(line.get(key))
            if step is None or v is None or not math.isfinite(v):
                continue
            by_step.setdefault(step, []).append(v)
    steps = sorted(by_step)
    means, stds = [], []
    for s in steps:
        m, sd = _mean_std(by_step[s])
        means.append(m)
        stds.append(sd or 0.0)
    return steps, means, stds


def plot(rows: Sequence[Row], out_dir: str | os.PathLike) -> list[Path]:
    """Write PNG figures to ``out_dir`` and return their paths.

    * ``loss_curves.png``: training loss per configuration, mean ± std band over seeds by step;
    * ``val_<metric>.png``: the validation metric over steps, when logged;
    * ``<metric>_vs_rank.png``: test metric against ``method.rank``, one line per method
      (and other swept values), when the rank varies;
    * ``<metric>_vs_params.png``: test metric against trainable parameters (log x).
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise UserError("plots need matplotlib: pip install 'peftlab[plots]'") from exc

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = list(rows)
    if not rows:
        return []
    metric = rows[0].metric
    written: list[Path] = []

    def save(fig, name: str) -> None:
        path = out / name
        fig.savefig(path, dpi=110, bbox_inches="tight")
        written.append(path)

    def curves(key: str, split: str, ylabel: str, name: str, title: str) -> None:
        fig = Figure(figsize=(7, 4.2))
        ax = fig.add_subplot()
        drew = False
        for r in rows:
            steps, mean, std = _train_curve(r.records, key, split)
            if not steps:
                continue
            drew = True
            (ln,) = ax.plot(steps, mean, label=f"{r.label} (n={len(r.records)})", lw=1.5)
            lo = [m - s for m, s in zip(mean, std)]
            hi = [m + s for m, s in zip(mean, std)]
            ax.fill_between(steps, lo, hi, color=ln.get_color(), alpha=0.2, lw=0)
        if drew:
            ax.set_xlabel("step")
            ax.set_ylabel(ylabel)
            ax.set_title(title)
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
            save(fig, name)

    curves("loss", "train", "training loss", "loss_curves.png", "training loss (mean ± std over seeds)")
    curves(metric, "validation", f"validation {metric}", f"val_{metric}.png", f"validation {metric} (mean ± std over seeds)")

    # metric vs rank, one line per method (+ the other swept values)
    ranks = [_as_number(r.records[0].value("method.rank")) for r in rows]
    if len({x for x in ranks if x is not None}) > 1:
        lines: dict[str, list[tuple[float, Row]]] = {}
        for r, x in zip(rows, ranks):
            if x is None or r.test_mean is None:
                continue
            others = [f"{k}={v}" for k, v in r.params.items() if k not in ("method", "method.rank")]
            method = r.params.get("method") or canonical(r.records[0].value("method"))
            name = " ".join([str(method)] + others)
            lines.setdefault(name, []).append((x, r))
        fig = Figure(figsize=(6.5, 4.2))
        ax = fig.add_subplot()
        for name, pts in sorted(lines.items()):
            pts.sort(key=lambda t: t[0])
            ax.errorbar(
                [p[0] for p in pts], [p[1].test_mean for p in pts],
                yerr=[p[1].test_std or 0.0 for p in pts], marker="o", capsize=3, label=name,
            )
        ax.set_xscale("log", base=2)
        ticks = sorted({p[0] for pts in lines.values() for p in pts})
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("method.rank")
        ax.set_ylabel(f"test {metric}")
        ax.set_title(f"test {metric} vs rank (mean ± std over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        save(fig, f"{metric}_vs_rank.png")

    pts = [r for r in rows if r.trainable_params and r.test_mean is not None]
    if pts:
        fig = Figure(figsize=(6.5, 4.2))
        ax = fig.add_subplot()
        for r in pts:
            ax.errorbar([r.trainable_params], [r.test_mean], yerr=[r.test_std or 0.0], marker="o", capsize=3,
                        label=r.label)
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters")
        ax.set_ylabel(f"test {metric}")
        ax.set_title(f"test {metric} vs trainable parameters")
        ax.grid(alpha=0.3, which="both")
        if len(pts) <= 12:
            ax.legend(fontsize="small")
        save(fig, f"{metric}_vs_params.png")
    return written


# ================================================================== html ===
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}
td.p{text-align:left;font-family:ui-monospace,monospace}
tr.best td{font-weight:bold;background:#eef8ee}
tr.noise td{background:#f6fbf6}
.note{color:#555;font-size:13px}
figure{display:inline-block;margin:0.5em}
img{max-width:100%}
pre{background:#f7f7f7;padding:0.8em;overflow:auto;font-size:12px}
details{margin:0.4em 0}
summary{cursor:pointer;font-family:ui-monospace,monospace}
"""


def _html_table(rows: Sequence[Row]) -> str:
    cols = _columns(rows)
    n_left = max(len(rows[0].params), 1) if rows else 0
    head = "".join(f"<th>{html.escape(h)}</th>" for h, _ in cols)
    body = []
    for r in rows:
        cls = "best" if r.best else "noise" if r.within_noise else ""
        cells = "".join(
            f'<td class="p">{html.escape(f(r))}</td>' if i < n_left else f"<td>{html.escape(f(r))}</td>"
            for i, (_, f) in enumerate(cols)
        )
        body.append(f'<tr class="{cls}">{cells}</tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def html_report(
    rows: Sequence[Row],
    records: Sequence[RunRecord],
    figures: Sequence[str | os.PathLike],
    out_file: str | os.PathLike,
    title: str = "peftlab compare",
    notes: Sequence[str] = (),
) -> Path:
    """Write one self-contained HTML file: the table, the figures (base64 PNG data
    URIs), and each configuration's resolved config and runs in a ``<details>``.
    Needs no server and no other file."""
    import yaml

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="note">{len(records)} run(s) in {len(rows)} configuration(s). {html.escape(caption(rows))}</p>',
        _html_table(rows),
    ]
    parts += [f'<p class="note">{html.escape(n)}</p>' for n in notes if n]
    if figures:
        parts.append("<h2>Figures</h2>")
        for fig in figures:
            data = base64.b64encode(Path(fig).read_bytes()).decode("ascii")
            name = html.escape(Path(fig).stem)
            parts.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{name}">'
                f"<figcaption class=\"note\">{name}</figcaption></figure>"
            )
    parts.append("<h2>Configurations</h2>")
    for r in rows:
        rec = r.records[0]
        cfg = yaml.safe_dump(rec.config, sort_keys=False, default_flow_style=False, allow_unicode=True)
        runs = "\n".join(
            f"{x.path}  seed={x.seed}  status={x.status}  overrides: {' '.join(x.overrides) or '(none)'}"
            for x in r.records
        )
        parts.append(
            f"<details><summary>{html.escape(r.label)} {html.escape(r.mark)}</summary>"
            f"<p class=\"note\">runs</p><pre>{html.escape(runs)}</pre>"
            f"<p class=\"note\">resolved config ({html.escape(str(rec.path))})</p><pre>{html.escape(cfg)}</pre></details>"
        )
    parts.append("</body></html>")
    out = Path(out_file)
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("\n".join(parts), encoding="utf-8")
    os.replace(tmp, out)
    return out
