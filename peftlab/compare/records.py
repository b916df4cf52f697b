"""Run records: reading run folders, collecting them from paths, ``--where`` filters.

A run folder holds meta.json (and no sweep.json); it is read as a
:class:`RunRecord` from config.yaml, overrides.txt, meta.json, summary.json and
analysis.json, with metrics.jsonl read only when plotted. A run whose
meta.json, summary.json, config.yaml or overrides.txt is damaged (unreadable,
not valid JSON/YAML, not an object) is left out with a note naming the file,
also with ``--all``: what it was cannot be told, so it must not be ranked.
A damaged analysis.json only loses the analysis columns.
"""

from __future__ import annotations

import glob as _glob
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftlab.run_files import read_json_object, read_text, read_yaml_mapping
from peftlab.compare.values import (
    MISSING,
    as_number,
    canonical,
    override_key,
    parse_scalar,
)
from peftlab.errors import UserError, did_you_mean
from peftlab.runs import read_jsonl

#: The file that makes a folder a run folder, and the one that makes it a sweep folder instead.
RUN_FILE = "meta.json"
SWEEP_FILE = "sweep.json"


@dataclass
class RunRecord:
    """One run folder as read from disk (metrics.jsonl is read only when plotted)."""

    path: Path
    config: dict
    overrides: list[str]
    meta: dict
    summary: dict
    analysis: dict | None = None
    #: Why the run cannot be trusted (a damaged meta.json, summary.json, ...): ``collect`` leaves it out.
    problems: list[str] = field(default_factory=list)
    #: A damaged analysis.json: the run stays, without its analysis.
    analysis_problem: str | None = None
    _metrics: list[dict] | None = field(default=None, repr=False)

    @classmethod
    def load(cls, path: Path) -> RunRecord:
        path = Path(path)
        problems: list[str] = []

        def keep(read: tuple[Any, str | None], default: Any) -> Any:
            value, problem = read
            if problem:
                problems.append(problem)
            return default if value is None else value

        text = keep(read_text(path / "overrides.txt"), "")
        overrides = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
        analysis, analysis_problem = read_json_object(path / "analysis.json")
        return cls(
            path=path,
            config=keep(read_yaml_mapping(path / "config.yaml"), {}),
            overrides=overrides,
            meta=keep(read_json_object(path / RUN_FILE), {}),
            summary=keep(read_json_object(path / "summary.json"), {}),
            analysis=analysis,
            problems=problems,
            analysis_problem=analysis_problem,
        )

    # -- identity ----------------------------------------------------------------
    @property
    def status(self) -> str:
        return str(self.meta.get("status", "unknown"))

    @property
    def seed(self) -> Any:
        return self.meta.get("seed", self.config.get("seed"))

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
            kv = override_key(line)
            if kv:
                out[kv[0]] = kv[1]
        return out

    def value(self, key: str) -> Any:
        """The run's value for ``key``: group choice, resolved config value, or override; else MISSING."""
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
            return parse_scalar(ov[key])
        if found:  # a config group without a recorded choice: its _target_ names it
            return node.get("_target_", "").rsplit(".", 1)[-1] or MISSING
        return MISSING

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
            rows = read_jsonl(self.path / "metrics.jsonl")
            self._metrics = rows
        return self._metrics


# ================================================================ collect ===
def _is_run(d: Path) -> bool:
    return (d / RUN_FILE).is_file() and not (d / SWEEP_FILE).is_file()


def _walk_runs(root: Path) -> list[Path]:
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        # the listing os.walk already made, rather than two stat calls per folder as in _is_run
        if RUN_FILE in filenames and SWEEP_FILE not in filenames:
            found.append(Path(dirpath))
            dirnames[:] = []  # a run folder holds no runs (skip adapter/, checkpoints/)
        else:
            dirnames.sort()
    return found


def _note(notes: list[str] | None, text: str) -> None:
    if notes is not None:
        notes.append(text)


def _member_refs(sweep_dir: Path, notes: list[str] | None) -> list[Any]:
    """The ``run`` of every member in sweep.json (None for a member without one)."""
    data, problem = read_json_object(sweep_dir / SWEEP_FILE)
    if problem:
        _note(notes, f"{problem}: its members are not read")
        return []
    members = (data or {}).get("members") or []
    if not isinstance(members, list):
        _note(notes, f"{sweep_dir / SWEEP_FILE} has no list of members: its members are not read")
        return []
    return [m.get("run") if isinstance(m, dict) else None for m in members]


def _sweep_members(sweep_dir: Path, notes: list[str] | None) -> list[Path]:
    """The run folders of a sweep's members, resolved as the sweep itself resolves them."""
    # peftlab.sweep.members imports no torch nor hydra; imported here, when a sweep is read
    from peftlab.sweep.members import run_path

    out: list[Path] = []
    not_started = missing = 0
    for ref in _member_refs(sweep_dir, notes):
        folder = run_path(sweep_dir, ref)
        if folder is None:
            not_started += 1
        elif _is_run(folder):
            out.append(folder)
        else:
            missing += 1
    if not_started:
        _note(notes, f"{not_started} member(s) of sweep {sweep_dir} have no run folder yet")
    if missing:
        root = run_path(sweep_dir, ".")  # the folder relative member runs are resolved against
        _note(notes, f"{missing} member run folder(s) of sweep {sweep_dir} were not found under {root}")
    return out


def _runs_dir() -> Path:
    return Path(os.environ.get("PEFTLAB_RUNS_DIR", "runs"))


def collect(paths: Sequence[str], notes: list[str] | None = None) -> list[RunRecord]:
    """Load the runs named by ``paths``, deduplicated, in the order found.

    Each path may be a run folder (holds meta.json), a sweep folder (holds
    sweep.json; its members' run folders are read), any folder containing run
    folders (searched recursively), a glob, or ``<name>[/<version>]`` under the
    runs directory (``$PEFTLAB_RUNS_DIR`` or ``runs``). A path that matches
    nothing is a :class:`UserError`. A sweep's member runs are found where the
    sweep itself finds them (:func:`peftlab.sweep.members.run_path`). Runs with
    a damaged file are left out. Remarks (sweep members without a run folder,
    damaged files, ...) are appended to ``notes`` when given.
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
                continue
            if (t / SWEEP_FILE).is_file():
                dirs.extend(_sweep_members(t, notes))
            dirs.extend(_walk_runs(t))
    return _load_once(dirs, notes)


def _load_once(dirs: Sequence[Path], notes: list[str] | None) -> list[RunRecord]:
    """Each folder read once (by real path); damaged runs are left out with a note naming the file."""
    seen: set[str] = set()
    records: list[RunRecord] = []
    for d in dirs:
        key = os.path.realpath(d)
        if key in seen:
            continue
        seen.add(key)
        rec = RunRecord.load(d)
        for problem in rec.problems:
            _note(notes, f"{problem}: left out")
        if rec.analysis_problem:
            _note(notes, f"{rec.analysis_problem}: its analysis is ignored")
        if not rec.problems:
            records.append(rec)
    return records


# ================================================================= select ===
_WHERE = re.compile(r"^\s*([A-Za-z_+~][\w.\-/]*)\s*(>=|<=|!=|==|=|>|<)\s*(.*?)\s*$")


def parse_where(expr: str):
    """Parse ``key OP value`` (OP: = == != < <= > >=); ``=`` accepts a comma list.

    Returns a predicate over :class:`RunRecord`; a run without the key never matches.
    """
    m = _WHERE.match(expr)
    if not m:
        raise UserError(f"cannot read --where '{expr}': write key=value, key!=value or key>=number (e.g. method.rank>=8)")
    key, op, raw = m.group(1).lstrip("+"), m.group(2), m.group(3)
    if op in ("<", "<=", ">", ">="):
        bound = as_number(raw)
        if bound is None:
            raise UserError(f"--where '{expr}': '{op}' needs a number on the right, got '{raw}'")

        def pred(rec: RunRecord) -> bool:
            v = as_number(rec.value(key))
            if v is None:
                return False
            return {"<": v < bound, "<=": v <= bound, ">": v > bound, ">=": v >= bound}[op]

    else:
        wanted = {canonical(x) for x in (raw.split(",") if op in ("=", "==") else [raw])}

        def pred(rec: RunRecord) -> bool:
            v = rec.value(key)
            if v is MISSING:
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
        if records and all(r.value(p.key) is MISSING for r in records):
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
