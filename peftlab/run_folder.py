"""One run folder, and the one reader of run folders: :class:`Run`.

The run folder is the single source of truth about a run: ``runs``, ``show``,
``compare``, ``clean`` and ``sweep`` all read runs through :class:`Run` (file
names: :mod:`peftlab.layout`). Layout::

    <root>/<name>/v<N>/
      config.yaml     fully resolved config
      overrides.txt   what the user typed, one override a line
      meta.json       status, times, error, history of earlier attempts, git commit (+dirty),
                      versions, host, device, seed, argv, choices, config_hash, and for a
                      sweep member sweep: {path, name, version, id, member} (written when created)
      metrics.jsonl   one JSON object a line per logged step / eval
      summary.json    selected + final metrics, params, memory, throughput, wall time
      adapter/        trained weights of the selected checkpoint
      best/step_N/    the best-validation weights while training (trainer.select=best), per step
      generations/    what a generative task's model said, per split and step
      predictions/    what a classifier predicted for each example (text, label, prediction, scores), per split and step
      checkpoints/    resumable state (see peftlab.checkpoints)
      analysis.json   spectral diagnostics (peftlab analyze, or analysis=spectral)
      ranks.json      {"ranks": {module: rank}}: the rank each matrix ended with, for methods
                      that choose ranks per layer (AdaLoRA, EVA; Method.final_ranks)
      .owner          flock-ed by the one process that writes the run (see peftlab.ownership)

summary.json keys read by ``peftlab runs`` / ``peftlab show`` / ``peftlab compare`` (all optional)::

    metric                                       the key metric's name (trainer.metric)
    selection, selected_step                     which checkpoint the run kept: "best" | "final", its step
    test: {<metric>: value, ...}                 test metrics of the kept checkpoint
    final_test: {<metric>: value, ...}           test metrics at the last step
    best_validation: {step: int, <metric>: ...}  best validation point
    final_validation: {<metric>: value, ...}     last validation metrics
    trainable_params, total_params, steps, wall_time_s, tokens_per_s, peak_memory_mb, device
    test_details: {labels, confusion, per_class}  a classifier's reported test, per class (show, compare --html)

The store (:mod:`peftlab.runs`) allocates the folders. Every file but
metrics.jsonl is written to a temporary name in the same folder and renamed
over the target (peftlab.files), as strict JSON. ``status`` moves running ->
completed | failed | interrupted, and completed only once summary.json exists.

No torch (nor transformers/datasets/accelerate) is imported here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from peftlab.files import atomic_write_json, atomic_write_text, to_json
from peftlab.layout import (
    ADAPTER_DIR,
    ANALYSIS_FILE,
    BEST_DIR,
    CHECKPOINT_PREFIX,
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    GENERATIONS_DIR,
    META_FILE,
    METRICS_FILE,
    OVERRIDES_FILE,
    RANKS_FILE,
    SUMMARY_FILE,
)
from peftlab.ownership import Ownership
from peftlab.provenance import this_process
from peftlab.run_files import read_json_object, read_text, read_yaml_mapping
from peftlab.timestamps import now_iso
from peftlab.values import MISSING, override_key, parse_scalar

STATUSES = ("running", "completed", "failed", "interrupted")
TERMINAL = ("completed", "failed", "interrupted")
#: Why a failed run failed (meta.json "failure"). The first three come from what the run was
#: asked to compute and would come again; "storage" (a full or read-only disk) is the machine's,
#: and the same run is worth running again once it is fixed.
FAILURES = ("nonfinite", "invalid", "crash", "storage")
RETRYABLE_FAILURES = ("storage",)


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def read_jsonl(path: str | Path) -> list[dict]:
    """The JSON objects of a JSON-lines file; blank, truncated or damaged lines are skipped."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
    except (FileNotFoundError, NotADirectoryError):
        return []
    records = []
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


class Run:
    """One run folder ``<root>/<name>/<version>``: the one reader of run folders.

    Every command reads runs through this class. Each file is read once per
    object (``reload()`` reads again); a damaged file reads as empty here, and
    ``problems()`` names it, so that listing never breaks and commands that
    must not guess can refuse.
    """

    def __init__(self, path: str | Path):
        self.path: Path = Path(path).absolute()
        self.name: str = self.path.parent.name
        self.version: str = self.path.name
        self._files: dict[str, tuple[Any, str | None]] = {}
        self._metrics: list[dict] | None = None

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Run) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    @property
    def label(self) -> str:
        """``name/version``, how runs are named on the command line."""
        return f"{self.name}/{self.version}"

    # ---- files
    @property
    def meta_path(self) -> Path:
        return self.path / META_FILE

    @property
    def summary_path(self) -> Path:
        return self.path / SUMMARY_FILE

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def overrides_path(self) -> Path:
        return self.path / OVERRIDES_FILE

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def analysis_path(self) -> Path:
        return self.path / ANALYSIS_FILE

    @property
    def ranks_path(self) -> Path:
        return self.path / RANKS_FILE

    @property
    def adapter_dir(self) -> Path:
        return self.path / ADAPTER_DIR

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    @property
    def generations_dir(self) -> Path:
        """What a generative task's model said: one JSON-lines file per evaluated split and step."""
        return self.path / GENERATIONS_DIR

    @property
    def best_dir(self) -> Path:
        """The best-validation weights so far, while the run trains (``trainer.select=best``)."""
        return self.path / BEST_DIR

    # ---- reading
    def _read(self, filename: str) -> tuple[Any, str | None]:
        """``(content, problem)`` of one of the run's files, read once; content None when missing or damaged."""
        if filename not in self._files:
            path = self.path / filename
            if filename == CONFIG_FILE:
                self._files[filename] = read_yaml_mapping(path)
            elif filename == OVERRIDES_FILE:
                self._files[filename] = read_text(path)
            else:
                self._files[filename] = read_json_object(path)
        return self._files[filename]

    def problem(self, filename: str) -> str | None:
        """Why one of the run's files (a name from peftlab.layout) cannot be read; None when it can or is absent."""
        return self._read(filename)[1]

    def problems(self) -> list[str]:
        """What makes the run untrustworthy: each damaged meta.json, summary.json, config.yaml or overrides.txt."""
        files = (OVERRIDES_FILE, CONFIG_FILE, META_FILE, SUMMARY_FILE)
        return [problem for f in files if (problem := self.problem(f)) is not None]

    @property
    def meta(self) -> dict:
        """meta.json as a dict ({} when missing or damaged). ``write_meta`` keeps it current."""
        return dict(self._read(META_FILE)[0] or {})

    def reload(self) -> "Run":
        """Forget what was read (another process may have written since)."""
        self._files.clear()
        self._metrics = None
        return self

    @property
    def summary(self) -> dict:
        """summary.json as a dict ({} when missing or damaged)."""
        return dict(self._read(SUMMARY_FILE)[0] or {})

    @property
    def config(self) -> dict:
        """The resolved config.yaml as a plain dict ({} when missing or damaged)."""
        return dict(self._read(CONFIG_FILE)[0] or {})

    @property
    def analysis(self) -> dict | None:
        """analysis.json (``peftlab analyze``), or None when missing or damaged."""
        return self._read(ANALYSIS_FILE)[0]

    @property
    def ranks(self) -> dict[str, int]:
        """The rank each adapted matrix ended with, by module name ({} when the method did not choose
        ranks, or ranks.json is missing or damaged)."""
        ranks = (self._read(RANKS_FILE)[0] or {}).get("ranks")
        if not isinstance(ranks, dict):
            return {}
        return {str(k): v for k, v in ranks.items() if isinstance(v, int) and not isinstance(v, bool)}

    @property
    def status(self) -> str:
        """running | completed | failed | interrupted, or "unknown"."""
        return str(self.meta.get("status") or "unknown")

    @property
    def started_at(self) -> str | None:
        return self.meta.get("started_at")

    @property
    def seed(self) -> Any:
        return self.meta.get("seed", self.config.get("seed"))

    @property
    def choices(self) -> dict:
        """The config group options the run was composed from (method, model, dataset, ...)."""
        choices = self.meta.get("choices")
        return dict(choices) if isinstance(choices, dict) else {}

    @property
    def sweep(self) -> dict | None:
        """``{"path", "name", "version", "member"}`` when the run is a sweep member, else None."""
        sweep = self.meta.get("sweep")
        return dict(sweep) if isinstance(sweep, dict) else None

    @property
    def metric_name(self) -> str | None:
        """The run's key metric: summary.json ``metric``, else the config's ``trainer.metric``."""
        if self.summary.get("metric"):
            return str(self.summary["metric"])
        trainer = self.config.get("trainer")
        metric = trainer.get("metric") if isinstance(trainer, dict) else None
        return str(metric) if metric else None

    def metrics(self) -> list[dict]:
        """Every record of metrics.jsonl; a truncated or damaged line (a crash mid-write) is skipped."""
        if self._metrics is None:
            self._metrics = read_jsonl(self.metrics_path)
        return list(self._metrics)

    def checkpoints(self) -> list[Path]:
        """The complete checkpoint folders, oldest first (one still being written ends in .tmp)."""
        try:
            names = os.listdir(self.checkpoints_dir)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return [self.checkpoints_dir / n for n in sorted(names)
                if n.startswith(CHECKPOINT_PREFIX) and not n.endswith(".tmp")]

    def overrides(self) -> list[str]:
        """The overrides the user typed (overrides.txt), one per line; blank and # lines are skipped."""
        text = self._read(OVERRIDES_FILE)[0] or ""
        return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]

    # ---- values by key (``--where``, the columns of ``peftlab runs``, compare's grouping)
    def override_map(self) -> dict[str, str]:
        """``{"method.rank": "8", ...}`` of overrides.txt."""
        return dict(kv for line in self.overrides() if (kv := override_key(line)))

    def value(self, key: str) -> Any:
        """The run's value for ``key``: status, seed, sweep, a group choice, a config value or an override.

        MISSING when the run has none of them (``--where`` then never matches it).
        """
        special = self._special_value(key)
        if special is not MISSING:
            return special
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
        overrides = self.override_map()
        if key in overrides:
            return parse_scalar(overrides[key])
        if found:  # a config group without a recorded choice: its _target_ names it
            return node.get("_target_", "").rsplit(".", 1)[-1] or MISSING
        return MISSING

    def _special_value(self, key: str) -> Any:
        """Values that live in meta.json rather than the config: status, seed, sweep, sweep.member."""
        if key == "status":
            return self.status
        if key == "seed":
            return self.seed
        if key in ("sweep", "sweep.member"):
            sweep = self.sweep
            if sweep is None:
                return MISSING
            return f"{sweep.get('name')}/{sweep.get('version')}" if key == "sweep" else sweep.get("member", MISSING)
        return MISSING

    def config_keys(self) -> list[str]:
        """Every dotted key of the resolved config and the group choices (for did-you-mean)."""
        out: list[str] = list(self.choices)

        def walk(node: dict, prefix: str) -> None:
            for k, v in node.items():
                key = f"{prefix}{k}"
                out.append(key)
                if isinstance(v, dict):
                    walk(v, key + ".")

        walk(self.config, "")
        return out

    # ---- writing
    def write_config(self, config_yaml: str, overrides: list[str]) -> None:
        """Write the resolved config.yaml and overrides.txt (both atomically)."""
        atomic_write_text(self.config_path, config_yaml)
        atomic_write_text(self.overrides_path, "".join(f"{o}\n" for o in overrides))
        self._files.pop(CONFIG_FILE, None)
        self._files.pop(OVERRIDES_FILE, None)

    def write_meta(self, **fields: Any) -> dict:
        """Merge ``fields`` into meta.json (read-modify-write, atomic); returns the new meta."""
        meta = _read_json(self.meta_path)
        meta.update(fields)
        atomic_write_json(self.meta_path, meta)
        self._files[META_FILE] = (meta, None)
        return dict(meta)

    def set_status(self, status: str, **fields: Any) -> dict:
        """Move the run to ``status`` (running | completed | failed | interrupted).

        Terminal states record ``ended_at``. "completed" is refused (ValueError)
        until summary.json exists, so a completed run always has its summary.
        """
        if status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, not {status!r}")
        if status == "completed" and not self.summary_path.is_file():
            raise ValueError(f"cannot mark {self.path} completed: summary.json has not been written")
        meta = _read_json(self.meta_path)
        if status in TERMINAL:
            meta["ended_at"] = now_iso()
        else:
            # (Re)started, e.g. resumed: how the previous attempt ended goes to the history,
            # so no stale error outlives a successful resume.
            if meta.get("status") in TERMINAL:
                past = {k: meta[k] for k in ("status", "ended_at", "error", "step") if meta.get(k) is not None}
                meta["history"] = [*meta.get("history", []), past]
            for stale in ("error", "step"):
                meta.pop(stale, None)
            meta.update(ended_at=None, **this_process())
        meta.update(status=status, **fields)
        atomic_write_json(self.meta_path, meta)
        self._files[META_FILE] = (meta, None)
        return dict(meta)

    # ---- ownership
    def own(self) -> "Ownership":
        """Become the one process that writes this run; RunBusy when a live process already does.

        The lock is an ``flock`` on ``<run>/.owner``: the kernel drops it when the
        owner dies, however it dies, so liveness needs no pid guessing. Hold the
        returned object for as long as the run is written (``release()`` or ``with``).
        """
        return Ownership.acquire(self)

    def owner(self) -> dict | None:
        """Who writes this run now (``{"pid", "host", "since"}``), or None when nobody does."""
        return Ownership.holder(self)

    def append_metrics(self, record: dict) -> None:
        """Append one JSON line to metrics.jsonl (and flush it)."""
        line = to_json(record)
        with open(self.metrics_path, "a+b") as f:
            # A crash mid-line leaves no trailing newline; start a fresh line so the
            # damaged record stays the only one lost (e.g. when a run is resumed).
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")
            f.write(line.encode("utf-8") + b"\n")
            f.flush()
        self._metrics = None

    def metrics_size(self) -> int:
        """Bytes of metrics.jsonl (a checkpoint records it, so resume can cut what came after)."""
        try:
            return self.metrics_path.stat().st_size
        except FileNotFoundError:
            return 0

    def truncate_metrics(self, size: int) -> None:
        """Drop the metric lines written after the file had ``size`` bytes (they are recomputed)."""
        if self.metrics_size() > size:
            with open(self.metrics_path, "r+b") as f:
                f.truncate(size)
            self._metrics = None

    def write_summary(self, summary: dict) -> None:
        """Write summary.json atomically."""
        atomic_write_json(self.summary_path, summary)
        self._files.pop(SUMMARY_FILE, None)
