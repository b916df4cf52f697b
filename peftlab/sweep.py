"""Sweeps: many runs from one command, through Hydra's own multirun machinery.

``peftlab sweep method=lora,pissa method.rank=4,8,16 seed=0,1,2`` composes the
multirun with Hydra and hands it to the configured sweeper and launcher, so every
Hydra plugin works unchanged: the basic launcher (one member after the other),
the joblib launcher (``--jobs N``), the submitit launchers (``hydra/launcher=
submitit_local`` or ``submitit_slurm``) and the Optuna sweeper (``hydra/sweeper=
optuna``). Nothing here schedules jobs itself.

A sweep is a versioned folder ``<runs>/sweeps/<name>/v<N>``::

    sweep.json        {"name", "version", "grid", "members": [{"index", "overrides", "run", "status"}], ...}
    members/<i>.json  what member i's task wrote (atomically): status, run folder, error, pid, ...
    hydra/            Hydra's sweep dir of the first launch (multirun.yaml, one .hydra/ per job)
    hydra-2/, ...     Hydra's sweep dir of each --continue

Members finish in other processes (joblib, submitit), so each writes only its own
``members/<i>.json``; ``sweep.json`` is rebuilt from those files (under a file
lock) after every member, at the end of a launch and on ``--continue``. A member's
``run`` is its run folder relative to the runs folder (``sweep_dir.parents[2]``)
when it lies inside it, else absolute; ``peftlab compare`` reads it from there.

``--continue`` re-reads the sweep and launches, with the sweep's Hydra launcher,
only the members whose run did not complete: interrupted runs with a checkpoint
resume from it (``resume=``), the others start again. No torch at module level:
the member task imports the training loop when it runs.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import socket
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from peftlab import runs
from peftlab.errors import UserError

SWEEP_FILE = "sweep.json"
MEMBERS_DIR = "members"
LAUNCH_FILE = "launch.json"  # in a launch's Hydra dir: which member each job number is
LOCK_FILE = ".lock"
BASIC, OPTUNA = "basic", "optuna"
PLUGINS_HINT = "install the optional Hydra plugins with: pip install 'peftlab[sweep]'"


# =========================================================================== planning
@dataclass
class Plan:
    """What a sweep will do, worked out before anything is created."""

    overrides: list[str]  # task overrides as typed (with sweep syntax)
    hydra_overrides: list[str]  # hydra.* / hydra/ overrides as typed (+ --jobs)
    config_dirs: list[str]
    sweeper: str  # basic | optuna | another sweeper's option name
    launcher: str
    members: list[list[str]] | None  # the expanded grid (None when the sweeper decides)
    dims: list[tuple[str, int]]  # swept key, number of values
    count: int | None
    grid: list[str]  # the sweep overrides as typed
    runs_root: Path
    name: str
    metric: str
    direction: str | None = None  # optuna: minimize | maximize
    extra: list[str] = field(default_factory=list)  # hydra overrides peftlab adds (no paths)

    def describe(self) -> str:
        if self.sweeper == BASIC:
            what = " × ".join(f"{n} {k}" for k, n in self.dims) or "no swept key"
        elif self.sweeper == OPTUNA:
            what = f"optuna over {', '.join(k for k, _ in self.dims) or 'nothing'}, {self.direction} {self.metric}"
        else:
            what = f"sweeper {self.sweeper}"
        if self.launcher != BASIC:
            what += f"; launcher {self.launcher}"
        count = "?" if self.count is None else str(self.count)
        return f"{count} run{'' if self.count == 1 else 's'} ({what})"


def _key(text: str) -> str:
    return text.partition("=")[0].strip().lstrip("+~")


def _is_hydra(text: str) -> bool:
    key = _key(text)
    return key == "hydra" or key.startswith("hydra.") or key.startswith("hydra/")


def _quote(value: str) -> str:
    """A path as a quoted Hydra override value."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _hydra(config_dirs: Sequence[str | Path] = ()):
    """A fresh Hydra instance on peftlab's config tree (+ the user's folders after it)."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.core.global_hydra import GlobalHydra

    from peftlab.config import config_dir

    from hydra import version

    version.setbase(None)  # this Hydra's own defaults, as `peftlab train` composes (no 1.1 compatibility)
    GlobalHydra.instance().clear()
    search_path = create_config_search_path(str(config_dir()))
    for d in reversed([Path(d).resolve() for d in config_dirs]):
        if not d.is_dir():
            raise UserError(f"config folder '{d}' does not exist: pass an existing folder to --config-dir")
        search_path.append("peftlab --config-dir", f"file://{d}", anchor=SearchPathQuery(provider="main"))
    return Hydra.create_main_hydra2(task_name="peftlab", config_search_path=search_path)


def _hydra_error(exc: Exception, hydra: Any, overrides: Sequence[str], config_dirs: Sequence[str]) -> UserError:
    """One line for a Hydra composition error, with the installed plugins for hydra/ groups."""
    from peftlab.config import explain_hydra_error, search_path

    text = str(exc)
    missing = re.search(r"Could not (?:find|load) '(hydra/\w+)/([^']+)'", text)
    if missing:
        group, option = missing.group(1), missing.group(2)
        try:
            installed = sorted(hydra.config_loader.get_group_options(group))
        except Exception:  # noqa: BLE001 - only for the message
            installed = []
        return UserError(
            f"unknown {group} '{option}': installed: {', '.join(installed) or '(none)'}; {PLUGINS_HINT}"
        )
    return UserError(explain_hydra_error(exc, list(overrides), search_path(config_dirs)))


def _plugin_name(choices: Any, group: str, target: str) -> str:
    name = choices.get(group) if choices is not None else None
    if name:
        return str(name)
    return target.rsplit(".", 1)[-1] if target else "?"


def plan(overrides: Sequence[str], *, jobs: int | None = None, config_dirs: Sequence[str] = (),
         name: str | None = None, extra_hydra: Sequence[str] = ()) -> Plan:
    """Parse, expand and validate a sweep; every mistake is a one-line ``UserError``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from hydra.types import RunMode
    from omegaconf.errors import OmegaConfBaseException

    from peftlab.config import compose

    overrides = [str(o) for o in overrides]
    config_dirs = [str(d) for d in config_dirs]
    hydra_ovr = [o for o in overrides if _is_hydra(o)] + list(extra_hydra)
    task = [o for o in overrides if not _is_hydra(o)]
    for o in hydra_ovr:
        if _key(o) in ("hydra.sweep.dir", "hydra.run.dir"):
            raise UserError(
                f"'{o}' is not allowed: peftlab sweep keeps Hydra's output inside the sweep folder; "
                f"choose where runs go with runs_dir=... instead"
            )
    if jobs is not None:
        if jobs < 1:
            raise UserError(f"--jobs {jobs} is not allowed: use --jobs N with N >= 1 (parallel runs)")
        chosen = [o.partition("=")[2] for o in hydra_ovr if _key(o) == "hydra/launcher"]
        if chosen and chosen[-1] != "joblib":
            raise UserError(
                f"--jobs runs the joblib launcher; it cannot be combined with hydra/launcher={chosen[-1]} "
                f"(set that launcher's own parallelism instead)"
            )
        if not chosen:
            hydra_ovr.append("hydra/launcher=joblib")
        hydra_ovr.append(f"hydra.launcher.n_jobs={jobs}")

    hydra = _hydra(config_dirs)
    parser = OverridesParser.create(config_loader=hydra.config_loader)
    parsed = []
    for text in task + hydra_ovr:
        try:
            one = parser.parse_overrides([text])
        except HydraException as exc:
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            lines = [ln for ln in lines if not ln.startswith(("Error parsing override", "See https"))]
            detail = re.sub(r"\s*expecting \{.*?\}", "", lines[0]).strip() if lines else ""
            raise UserError(
                f"cannot parse override '{text}'{' (' + detail + ')' if detail else ''}: "
                f"use key=value or a sweep: key=a,b,c, range(start,stop[,step]), glob(pattern)"
            ) from None
        if text in task:
            parsed += one

    # Empty keys and values.
    for o in parsed:
        if o.is_delete():
            continue
        if not o.get_key_element().lstrip("+~"):
            raise UserError(f"cannot parse override '{o.input_line}': use key=value, e.g. method.rank=16")
        if not o.is_sweep_override() and o.get_value_element_as_str() == "":
            raise UserError(
                f"'{o.input_line}' has no value: give one value or a comma-separated list, "
                f"e.g. {o.get_key_element()}=a,b"
            )

    # The master config: validates the hydra/ choices (launcher, sweeper) and their settings.
    master_overrides = hydra_ovr + _ours(hydra_ovr, Path("/nonexistent-peftlab-sweep")) + task
    try:
        master = hydra.compose_config("config", overrides=master_overrides + ["hydra.mode=MULTIRUN"],
                                      run_mode=RunMode.MULTIRUN, validate_sweep_overrides=False)
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        raise _hydra_error(exc, hydra, master_overrides, config_dirs) from None
    hchoices = master.hydra.runtime.choices
    sweeper_target = str(master.hydra.sweeper.get("_target_", ""))
    launcher_target = str(master.hydra.launcher.get("_target_", ""))
    sweeper = BASIC if sweeper_target.endswith("BasicSweeper") else _plugin_name(hchoices, "hydra/sweeper", sweeper_target)
    if "optuna" in sweeper_target.lower():
        sweeper = OPTUNA
    launcher = BASIC if launcher_target.endswith("BasicLauncher") else _plugin_name(hchoices, "hydra/launcher", launcher_target)

    # Expand the grid as the basic sweeper will, with the sweeper's configured params first.
    members: list[list[str]] | None = None
    dims: list[tuple[str, int]] = []
    grid = [o.input_line for o in parsed if o.is_sweep_override()]
    if sweeper == BASIC:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

        params = master.hydra.sweeper.get("params") or {}
        config_params = [f"{k}={v}" for k, v in params.items()]
        try:
            all_parsed = parser.parse_overrides(config_params) + parsed
            for o in all_parsed:
                if o.is_sweep_override():
                    if not o.is_discrete_sweep():
                        raise UserError(
                            f"'{o.input_line}' is a search range, not a list: the grid sweeper needs values "
                            f"(a,b,c or range(...)); search ranges need hydra/sweeper=optuna hydra.sweeper.n_trials=N"
                        )
                    values = list(o.sweep_string_iterator())
                    if not values:
                        raise UserError(
                            f"'{o.input_line}' sweeps over no values, so the sweep would make no run: "
                            f"give at least one value, e.g. {o.get_key_element()}=0,1 or range(0,3)"
                        )
                    dims = [d for d in dims if d[0] != o.get_key_element()] + [(o.get_key_element(), len(values))]
            members = [list(m) for batch in BasicSweeper.split_arguments(all_parsed, None) for m in batch]
        except HydraException as exc:
            raise UserError(f"invalid sweep: {str(exc).strip().splitlines()[0]}") from None
        grid = config_params + grid
        count: int | None = len(members)
        if not members:
            raise UserError("the sweep makes no run: give at least one value to every swept key")
    elif sweeper == OPTUNA:
        count = int(master.hydra.sweeper.n_trials)
        if count < 1:
            raise UserError(f"hydra.sweeper.n_trials={count} is not allowed: use an integer >= 1")
        params = master.hydra.sweeper.get("params") or {}
        dims = [(str(k), 0) for k in params] + [(o.get_key_element(), 0) for o in parsed if o.is_sweep_override()]
        grid = [f"{k}={v}" for k, v in params.items()] + grid
    else:
        count = None
        dims = [(o.get_key_element(), 0) for o in parsed if o.is_sweep_override()]

    # Validate every swept value once (the other keys at their first value): unknown
    # options, keys and bad values stop the sweep here, before any folder exists.
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    if members:
        checks = [members[0]]
        for key, _ in dims:
            seen = {o for o in members[0] if _key(o) == key}
            for m in members:
                value = next((o for o in m if _key(o) == key), None)
                if value is not None and value not in seen and all(
                    o == b or _key(o) == key for o, b in zip(m, members[0])
                ):
                    seen.add(value)
                    checks.append(m)
    else:
        checks = [fixed]
    cfg = None
    for check in checks:
        try:
            cfg = compose(check, config_dirs)
        except UserError as exc:
            if check is checks[0]:
                raise
            which = " ".join(o for o in check if o not in checks[0])
            raise UserError(f"{exc} (in the members with {which})") from None
    assert cfg is not None
    metric = str(cfg.trainer.metric)
    direction = None
    if sweeper == OPTUNA:
        given = [o.partition("=")[2] for o in hydra_ovr if _key(o) == "hydra.sweeper.direction"]
        if given:
            direction = given[-1]
        else:
            from peftlab.compare import LOWER_IS_BETTER

            direction = "minimize" if any(s in metric.lower() for s in LOWER_IS_BETTER) else "maximize"
    root = runs.runs_root(cfg.runs_dir)
    root = root if root.is_absolute() else Path.cwd() / root
    swept = [k for k, _ in dims]
    if not name:
        if cfg.get("name") and "name" not in swept:
            name = str(cfg.name)
        else:
            name = "-".join(k.replace("/", "_") for k in swept) or "sweep"
    extra = []
    if sweeper == OPTUNA and not any(_key(o) == "hydra.sweeper.direction" for o in hydra_ovr):
        extra.append(f"hydra.sweeper.direction={direction}")
    return Plan(overrides=task, hydra_overrides=hydra_ovr, config_dirs=config_dirs, sweeper=sweeper,
                launcher=launcher, members=members, dims=dims, count=count, grid=grid, runs_root=root,
                name=runs.check_name(name), metric=metric, direction=direction, extra=extra)


def _ours(user_hydra: Sequence[str], hydra_dir: Path) -> list[str]:
    """The Hydra settings a sweep adds unless the user set them: output inside the sweep folder."""
    given = {_key(o) for o in user_hydra}
    ours = {
        "hydra.sweep.dir": _quote(str(hydra_dir)),
        "hydra.run.dir": _quote(str(hydra_dir)),
        "hydra.job.chdir": "False",
        "hydra/job_logging": "disabled",
        "hydra/hydra_logging": "disabled",
    }
    return [f"{k}={v}" for k, v in ours.items() if k not in given]


# =========================================================================== the sweep folder
def _lock_file(sweep_dir: Path):
    @contextlib.contextmanager
    def locked() -> Iterator[None]:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: atomic writes only
            yield
            return
        with open(sweep_dir / LOCK_FILE, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    return locked()


def read(sweep_dir: Path) -> dict:
    try:
        with open(Path(sweep_dir) / SWEEP_FILE, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def run_ref(sweep_dir: Path, run_path: Path) -> str:
    """How sweep.json names a member run: relative to the runs folder when inside it."""
    run_path = Path(run_path).resolve()
    sweep_dir = Path(sweep_dir).resolve()
    if len(sweep_dir.parents) > 2:
        try:
            return str(run_path.relative_to(sweep_dir.parents[2]))
        except ValueError:
            pass
    return str(run_path)


def run_path(sweep_dir: Path, ref: str | None) -> Path | None:
    """The folder a member's ``run`` names (the way ``peftlab compare`` looks it up)."""
    if not ref:
        return None
    p = Path(ref)
    if p.is_absolute():
        return p
    sweep_dir = Path(sweep_dir).resolve()
    root = sweep_dir.parents[2] if len(sweep_dir.parents) > 2 else sweep_dir
    for candidate in (root / p, sweep_dir / p, root.parent / p, p):
        if (candidate / "meta.json").is_file():
            return candidate
    return root / p


def _find_run(record: dict, claimed: set[str]) -> Path | None:
    """The run folder a member started but did not record (it was killed): same process, newer version."""
    root, name, pid = record.get("runs_root"), record.get("run_name"), record.get("pid")
    if not root or not name or pid is None:
        return None
    after = int(record.get("after_version") or 0)
    for n, version in runs.versions(Path(root) / name):
        folder = Path(root) / name / version
        if n <= after or str(folder.resolve()) in claimed:
            continue
        meta = _read_json(folder / "meta.json")
        if meta.get("pid") == pid and meta.get("host") == record.get("host"):
            return folder
    return None


def _dead(record: dict) -> bool:
    """Whether the process that wrote a 'running' record is gone (False when it cannot be told)."""
    if record.get("host") != socket.gethostname():
        return False
    return runs.pid_alive(record.get("pid")) is False


def refresh(sweep_dir: Path, *, assume_dead: bool = False) -> dict:
    """Rebuild sweep.json's members from members/<i>.json and the runs' own status; returns it.

    ``assume_dead`` treats members still marked running as interrupted (used by
    ``--continue`` once it has made sure the sweep's process is gone).
    """
    sweep_dir = Path(sweep_dir)
    with _lock_file(sweep_dir):
        data = read(sweep_dir)
        if not data:
            return data
        members: dict[int, dict] = {}
        for i, m in enumerate(data.get("members") or []):
            if isinstance(m, dict):
                members[int(m.get("index", i))] = m
        records: dict[int, dict] = {}
        for f in sorted((sweep_dir / MEMBERS_DIR).glob("*.json")):
            rec = _read_json(f)
            if "index" in rec:
                records[int(rec["index"])] = rec
        claimed = {str(p.resolve()) for r in records.values() if (p := run_path(sweep_dir, r.get("run")))}
        for index in sorted(set(members) | set(records)):
            member = dict(members.get(index) or {"overrides": [], "run": None, "status": "pending"})
            member["index"] = index
            rec = records.get(index)
            if rec:
                member["overrides"] = rec.get("overrides") or member.get("overrides") or []
                member["status"] = rec.get("status", "running")
                member["run"] = rec.get("run")  # the latest attempt's run (None until it has one)
                if rec.get("error"):
                    member["error"] = rec["error"]
                else:
                    member.pop("error", None)
                if member["status"] == "running" and (assume_dead or _dead(rec)):
                    member["status"] = "interrupted"
                    if not member["run"]:
                        found = _find_run(rec, claimed)
                        if found is not None:
                            claimed.add(str(found.resolve()))
                            member["run"] = run_ref(sweep_dir, found)
            folder = run_path(sweep_dir, member.get("run"))
            if folder is not None and member["status"] != "pending":
                # The run folder has the last word on how the member's training ended.
                run = runs.Run(folder)
                status = run.status
                if status == "running" and (assume_dead or runs.is_stale(run)):
                    status = "interrupted"
                if status in runs.TERMINAL:
                    member["status"] = status
                elif status == "unknown" and member["status"] == "completed":
                    member["status"] = "missing"
            members[index] = {k: member[k] for k in ("index", "overrides", "run", "status", "error") if k in member}
        data["members"] = [members[i] for i in sorted(members)]
        counts: dict[str, int] = {}
        for m in data["members"]:
            counts[m["status"]] = counts.get(m["status"], 0) + 1
        data["counts"] = counts
        runs.atomic_write_json(sweep_dir / SWEEP_FILE, data)
        return data


def _write_record(sweep_dir: Path, index: int, record: dict) -> None:
    folder = Path(sweep_dir) / MEMBERS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    runs.atomic_write_json(folder / f"{index}.json", {"index": index, **record})


def find_sweep(spec: str, runs_dir: str | None = None) -> Path:
    """A sweep folder from what the user typed: a folder with sweep.json, or <name>[/vN] under <runs>/sweeps."""
    from peftlab.errors import did_you_mean

    text = str(spec).strip()
    path = Path(text).expanduser()
    if (path / SWEEP_FILE).is_file():
        return path
    root = runs.runs_root(runs_dir) / "sweeps"
    for candidate in (root / text,):
        if (candidate / SWEEP_FILE).is_file():
            return candidate
        versions = [v for _, v in runs.versions(candidate) if (candidate / v / SWEEP_FILE).is_file()]
        if versions:
            return candidate / versions[-1]
    names = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    hint = did_you_mean(text, names)
    where = f"sweeps under '{root}': {', '.join(names)}" if names else f"no sweeps under '{root}'"
    raise UserError(f"'{text}' is not a sweep folder (no {SWEEP_FILE}){hint}: pass runs/sweeps/<name>/v<N>; {where}")


# =========================================================================== the member task
def _sweep_dir_of(hydra_dir: Path) -> Path:
    for folder in (hydra_dir, *hydra_dir.parents):
        if (folder / SWEEP_FILE).is_file():
            return folder
    raise RuntimeError(f"no {SWEEP_FILE} above Hydra's sweep dir {hydra_dir}")


def _index_of(hydra_dir: Path, job_num: int) -> tuple[int, str | None]:
    """(member index, the resume= override the parent added) of job ``job_num`` of a launch."""
    launch = _read_json(hydra_dir / LAUNCH_FILE)
    jobs = launch.get("jobs")
    if isinstance(jobs, list) and 0 <= job_num < len(jobs):
        job = jobs[job_num]
        return int(job["index"]), job.get("resume")
    return int(launch.get("offset", 0)) + job_num, None


def run_member(cfg: Any) -> float | None:
    """Hydra's task function for one sweep member: train it and record how it ended.

    Returns the member's validation metric (the objective of search sweepers), or
    None when it failed. A member's failure is recorded, never raised, so the
    sweep goes on; an interrupt is recorded and raised, so the sweep stops.
    """
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from peftlab.config import GROUPS, validate

    hc = HydraConfig.get()
    hydra_dir = Path(str(hc.sweep.dir))
    sweep_dir = _sweep_dir_of(hydra_dir)
    index, resume = _index_of(hydra_dir, int(hc.job.num))
    task_overrides = [str(o) for o in OmegaConf.to_container(hc.overrides.task)]
    overrides = [o for o in task_overrides if o != resume]
    choices = {str(k): str(v) for k, v in hc.runtime.choices.items() if k in GROUPS and isinstance(v, str)}
    info = read(sweep_dir)
    record: dict[str, Any] = {
        "overrides": overrides, "status": "running", "run": None, "pid": os.getpid(),
        "host": socket.gethostname(), "started_at": runs.now_iso(), "hydra_job": int(hc.job.num),
        "output_dir": str(hc.runtime.output_dir),
    }
    run = None
    value = None
    try:
        try:
            validate(cfg)
            runs_dir = Path(str(cfg.runs_dir)).expanduser()
            if not runs_dir.is_absolute():
                # Launchers may start jobs elsewhere; runs go where the sweep was started.
                OmegaConf.set_struct(cfg, False)
                cfg.runs_dir = str(Path(str(hc.runtime.cwd)) / runs_dir)
                OmegaConf.set_struct(cfg, True)
            from peftlab.train import default_name

            root = runs.runs_root(cfg.runs_dir)
            name = str(cfg.name) if cfg.get("name") else default_name(choices)
            existing = runs.versions(root / name)
            record.update(runs_root=str(root.resolve()), run_name=name,
                          after_version=existing[-1][0] if existing else 0)
            if resume:
                record["run"] = run_ref(sweep_dir, Path(str(cfg.resume)))
        finally:
            _write_record(sweep_dir, index, record)
        from peftlab.train import train

        argv = list(info.get("argv") or ["peftlab", "sweep"])
        run = train(cfg, overrides=overrides, argv=argv, choices=choices, show_progress=False)
        summary = run.summary
        metric = str(summary.get("metric") or cfg.trainer.metric)
        best = summary.get("best_validation") or summary.get("final_validation") or {}
        if isinstance(best.get(metric), (int, float)) and math.isfinite(best[metric]):
            value = float(best[metric])
        record.update(status=run.status, run=run_ref(sweep_dir, run.path), value=value)
    except KeyboardInterrupt:
        record.update(status="interrupted", run=record["run"] or _found(sweep_dir, record))
        raise
    except UserError as exc:
        record.update(status="failed", error=str(exc), run=record["run"] or _found(sweep_dir, record))
    except Exception as exc:  # noqa: BLE001 - a bug in one member must not stop the others
        traceback.print_exc()
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                      run=record["run"] or _found(sweep_dir, record))
    finally:
        record["ended_at"] = runs.now_iso()
        _write_record(sweep_dir, index, record)
        data = refresh(sweep_dir)
        _say_member(data, index, record)
    return value


def _found(sweep_dir: Path, record: dict) -> str | None:
    data = read(sweep_dir)
    claimed = set()
    for m in data.get("members") or []:
        if m.get("run") and m.get("index") is not None:
            p = run_path(sweep_dir, m["run"])
            if p is not None:
                claimed.add(str(p.resolve()))
    found = _find_run(record, claimed)
    return run_ref(sweep_dir, found) if found is not None else None


def _say_member(data: dict, index: int, record: dict) -> None:
    swept = set(data.get("swept") or [])
    shown = [o for o in record.get("overrides", []) if _key(o) in swept] or record.get("overrides", [])
    total = data.get("count") or len(data.get("members") or [])
    line = f"[{index + 1}/{total}] {record['status']}: {' '.join(shown)}"
    if record.get("value") is not None:
        line += f"  {data.get('metric', 'metric')} {record['value']:.4f}"
    if record.get("error"):
        line += f"  ({record['error']})"
    print(line, flush=True)


# =========================================================================== launching
def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt()


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM stops the sweep like Ctrl-C: the running member is checkpointed and recorded."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _next_hydra_dir(sweep_dir: Path) -> Path:
    if not (sweep_dir / "hydra").exists():
        return sweep_dir / "hydra"
    k = 2
    while (sweep_dir / f"hydra-{k}").exists():
        k += 1
    return sweep_dir / f"hydra-{k}"


def _launch_sweeper(hydra_dir: Path, task: list[str], hydra_overrides: list[str], config_dirs: list[str],
                    offset: int = 0) -> None:
    """Hydra's multirun: the configured sweeper expands ``task`` and drives the configured launcher."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    hydra_dir.mkdir(parents=True, exist_ok=True)
    runs.atomic_write_json(hydra_dir / LAUNCH_FILE, {"offset": offset})
    _quiet_optuna()
    hydra = _hydra(config_dirs)
    overrides = hydra_overrides + _ours(hydra_overrides, hydra_dir) + task + ["hydra.mode=MULTIRUN"]
    try:
        hydra.multirun(config_name="config", task_function=run_member, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        raise _hydra_error(exc, hydra, overrides, config_dirs) from None
    except ValueError as exc:
        # The Optuna sweeper asks for the best trial at the end; when every member
        # failed there is none. The failures are recorded members, not a crash.
        if "No trials are completed" not in str(exc):
            raise
    finally:
        from hydra.core.global_hydra import GlobalHydra

        GlobalHydra.instance().clear()


def _quiet_optuna() -> None:
    """Optuna logs every study it creates; peftlab prints its own member lines."""
    import importlib.util

    if importlib.util.find_spec("optuna") is not None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)


def _launch_jobs(hydra_dir: Path, jobs: list[dict], hydra_overrides: list[str], config_dirs: list[str]) -> None:
    """Run given members (override lists) with the sweep's Hydra launcher, without its sweeper."""
    from hydra._internal.callbacks import Callbacks
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.plugins import Plugins
    from hydra.errors import HydraException
    from hydra.types import HydraContext, RunMode
    from omegaconf.errors import OmegaConfBaseException

    hydra_dir.mkdir(parents=True, exist_ok=True)
    runs.atomic_write_json(hydra_dir / LAUNCH_FILE, {"jobs": jobs})
    hydra = _hydra(config_dirs)
    overrides = hydra_overrides + _ours(hydra_overrides, hydra_dir) + ["hydra.mode=MULTIRUN"]
    try:
        cfg = hydra.compose_config("config", overrides=overrides, run_mode=RunMode.MULTIRUN,
                                   with_log_configuration=True)
        callbacks = Callbacks(cfg)
        callbacks.on_multirun_start(config=cfg, config_name="config")
        context = HydraContext(config_loader=hydra.config_loader, callbacks=callbacks)
        launcher = Plugins.instance().instantiate_launcher(config=cfg, hydra_context=context, task_function=run_member)
        batch = [list(j["overrides"]) + ([j["resume"]] if j.get("resume") else []) for j in jobs]
        results = launcher.launch(batch, initial_job_idx=0)
        callbacks.on_multirun_end(config=cfg, config_name="config")
    except (HydraException, OmegaConfBaseException) as exc:
        raise _hydra_error(exc, hydra, overrides, config_dirs) from None
    finally:
        GlobalHydra.instance().clear()
    for r in results:
        _ = r.return_value  # a job that crashed outside the task function raises here


@dataclass
class Outcome:
    sweep_dir: Path
    data: dict
    interrupted: bool = False

    @property
    def counts(self) -> dict[str, int]:
        return dict(self.data.get("counts") or {})


def start(p: Plan, argv: Sequence[str], announce: Any = print) -> Outcome:
    """Create the sweep folder, print what it will do, and run it."""
    run = runs.allocate(p.runs_root / "sweeps", p.name)
    sweep_dir = run.path.resolve()
    data = {
        "name": p.name,
        "version": run.version,
        "grid": p.grid,
        "members": [
            {"index": i, "overrides": m, "run": None, "status": "pending"} for i, m in enumerate(p.members or [])
        ],
        "overrides": p.overrides,
        "hydra_overrides": p.hydra_overrides + p.extra,
        "config_dirs": [str(Path(d).resolve()) for d in p.config_dirs],
        "sweeper": p.sweeper,
        "launcher": p.launcher,
        "count": p.count,
        "swept": [k for k, _ in p.dims],
        "metric": p.metric,
        "direction": p.direction,
        "argv": list(argv),
        "created_at": runs.now_iso(),
        "status": "running",
        "pid": os.getpid(),
        "host": socket.gethostname(),
    }
    runs.atomic_write_json(sweep_dir / SWEEP_FILE, data)
    announce(f"sweep {p.name}/{run.version}: {p.describe()}")
    return _run(sweep_dir, lambda: _launch_sweeper(_next_hydra_dir(sweep_dir), p.overrides,
                                                   p.hydra_overrides + p.extra, p.config_dirs))


def _run(sweep_dir: Path, launch: Any) -> Outcome:
    interrupted = False
    ok = False
    try:
        with _sigterm_interrupts():
            launch()
        ok = True
    except KeyboardInterrupt:
        interrupted = True
    finally:
        data = refresh(sweep_dir, assume_dead=not ok)
        counts = data.get("counts") or {}
        done = bool(data.get("members")) and counts.get("completed", 0) == len(data["members"])
        if data.get("sweeper") == OPTUNA and len(data.get("members") or []) < int(data.get("count") or 0):
            done = False
        data["status"] = "interrupted" if interrupted else ("completed" if done else ("failed" if ok else "crashed"))
        data["ended_at"] = runs.now_iso()
        with _lock_file(sweep_dir):
            current = read(sweep_dir)
            current.update(status=data["status"], ended_at=data["ended_at"])
            runs.atomic_write_json(sweep_dir / SWEEP_FILE, current)
    return Outcome(sweep_dir, data, interrupted)


def resume(spec: str, *, jobs: int | None = None, hydra_overrides: Sequence[str] = (),
           announce: Any = print) -> Outcome:
    """``--continue``: run the members of a sweep that did not complete."""
    sweep_dir = find_sweep(spec).resolve()
    data = read(sweep_dir)
    if not isinstance(data.get("members"), list):
        raise UserError(f"'{sweep_dir / SWEEP_FILE}' is damaged (no members list): start the sweep again")
    if data.get("status") == "running" and data.get("host") == socket.gethostname() \
            and runs.pid_alive(data.get("pid")) and data.get("pid") != os.getpid():
        raise UserError(
            f"sweep {sweep_dir} is still running (pid {data.get('pid')}): wait for it, or stop it before --continue"
        )
    stored_hydra = list(data.get("hydra_overrides") or [])
    extra = [str(o) for o in hydra_overrides]
    for o in extra:
        if _key(o) in ("hydra.sweep.dir", "hydra.run.dir"):
            raise UserError(f"'{o}' is not allowed: peftlab sweep keeps Hydra's output inside the sweep folder")
    if jobs is not None:
        if jobs < 1:
            raise UserError(f"--jobs {jobs} is not allowed: use --jobs N with N >= 1 (parallel runs)")
        extra = [o for o in extra if _key(o) != "hydra/launcher"] + ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"]
    given = {_key(o) for o in extra}
    for group in ("launcher", "sweeper"):
        if f"hydra/{group}" in given:  # another plugin: the stored one's settings do not apply to it
            stored_hydra = [o for o in stored_hydra if _key(o) != f"hydra/{group}" and not _key(o).startswith(f"hydra.{group}.")]
    hydra_ovr = [o for o in stored_hydra if _key(o) not in given] + extra
    config_dirs = list(data.get("config_dirs") or [])

    data = refresh(sweep_dir, assume_dead=True)
    members = data["members"]
    todo: list[dict] = []
    for m in members:
        if m.get("status") == "completed":
            continue
        job: dict[str, Any] = {"index": int(m["index"]), "overrides": list(m.get("overrides") or [])}
        folder = run_path(sweep_dir, m.get("run"))
        if m.get("status") == "interrupted" and folder is not None and not any(_key(o) == "resume" for o in job["overrides"]):
            if any(not c.name.endswith(".tmp") for c in (folder / "checkpoints").glob("step_*")):
                job["resume"] = f"resume={_quote(str(folder.resolve()))}"
        todo.append(job)
    count = int(data.get("count") or len(members))
    missing_trials = max(0, count - len(members)) if data.get("sweeper") == OPTUNA else 0
    completed = sum(1 for m in members if m.get("status") == "completed")
    name = f"{data.get('name')}/{data.get('version')}"
    if not todo and not missing_trials:
        announce(f"sweep {name}: all {len(members)} runs completed; nothing to continue")
        with _lock_file(sweep_dir):
            data = read(sweep_dir)
            data["status"] = "completed"
            runs.atomic_write_json(sweep_dir / SWEEP_FILE, data)
        return Outcome(sweep_dir, data)
    resumed = sum(1 for j in todo if j.get("resume"))
    what = f"{len(todo) + missing_trials} of {count} runs to go ({completed} completed"
    what += f", {resumed} resume from a checkpoint)" if resumed else ")"
    announce(f"sweep {name}: continuing, {what}")
    with _lock_file(sweep_dir):
        current = read(sweep_dir)
        current.update(status="running", pid=os.getpid(), host=socket.gethostname(), ended_at=None,
                       hydra_overrides=hydra_ovr)
        runs.atomic_write_json(sweep_dir / SWEEP_FILE, current)

    def launch() -> None:
        if todo:
            # The remaining members run through the launcher alone: the sweeper already chose them.
            plain = [o for o in hydra_ovr if not _key(o).startswith("hydra/sweeper") and not _key(o).startswith("hydra.sweeper")]
            _launch_jobs(_next_hydra_dir(sweep_dir), todo, plain, config_dirs)
        if missing_trials:
            task = list(data.get("overrides") or [])
            more = [o for o in hydra_ovr if _key(o) != "hydra.sweeper.n_trials"] + [f"hydra.sweeper.n_trials={missing_trials}"]
            _launch_sweeper(_next_hydra_dir(sweep_dir), task, more, config_dirs, offset=len(members))

    return _run(sweep_dir, launch)
