"""Planning a sweep: parse, expand and validate the grid before anything is created.

Hydra's own parser and basic sweeper expand the overrides, so the plan counts the
members exactly as the launch will; every mistake is a one-line ``UserError``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftlab import runs
from peftlab.errors import UserError

BASIC, OPTUNA = "basic", "optuna"
PLUGINS_HINT = "install the optional Hydra plugins with: pip install 'peftlab[sweep]'"


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


def key_of(text: str) -> str:
    return text.partition("=")[0].strip().lstrip("+~")


def is_hydra(text: str) -> bool:
    key = key_of(text)
    return key == "hydra" or key.startswith("hydra.") or key.startswith("hydra/")


def quote(value: str) -> str:
    """A path as a quoted Hydra override value."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def new_hydra(config_dirs: Sequence[str | Path] = ()):
    """A fresh Hydra instance on peftlab's config tree (+ the user's folders after it)."""
    from hydra import version
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.core.global_hydra import GlobalHydra

    from peftlab.config import config_dir

    version.setbase(None)  # this Hydra's own defaults, as `peftlab train` composes (no 1.1 compatibility)
    GlobalHydra.instance().clear()
    search_path = create_config_search_path(str(config_dir()))
    for d in reversed([Path(d).resolve() for d in config_dirs]):
        if not d.is_dir():
            raise UserError(f"config folder '{d}' does not exist: pass an existing folder to --config-dir")
        search_path.append("peftlab --config-dir", f"file://{d}", anchor=SearchPathQuery(provider="main"))
    return Hydra.create_main_hydra2(task_name="peftlab", config_search_path=search_path)


def hydra_error(exc: Exception, hydra: Any, overrides: Sequence[str], config_dirs: Sequence[str]) -> UserError:
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
    """Parse, expand and validate a sweep; every mistake is a one-line ``UserError``.

    Nothing on disk is touched: the sweep folder is created later, by ``launch.start``.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    config_dirs = [str(d) for d in config_dirs]
    task, hydra_ovr = _split_overrides([str(o) for o in overrides], extra_hydra, jobs)
    hydra = new_hydra(config_dirs)
    parser = OverridesParser.create(config_loader=hydra.config_loader)
    parsed = _parse(parser, task, hydra_ovr)
    _check_keys_and_values(parsed)
    master = _master_config(hydra, task, hydra_ovr, config_dirs)
    sweeper, launcher = _plugins(master)
    members, dims, count, grid = _expand(sweeper, master, parser, parsed)
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    cfg = _compose_all(members_to_check(members, [k for k, _ in dims]) if members else [fixed], config_dirs)
    metric = str(cfg.trainer.metric)
    direction = _direction(hydra_ovr, metric) if sweeper == OPTUNA else None
    root = runs.runs_root(cfg.runs_dir)
    root = root if root.is_absolute() else Path.cwd() / root
    name = name or _config_name(cfg, [k for k, _ in dims])
    extra = []
    if sweeper == OPTUNA and not any(key_of(o) == "hydra.sweeper.direction" for o in hydra_ovr):
        # Optuna's own default is minimize; stored with the Hydra overrides, --continue keeps this one too.
        extra.append(f"hydra.sweeper.direction={direction}")
    return Plan(overrides=task, hydra_overrides=hydra_ovr, config_dirs=config_dirs, sweeper=sweeper,
                launcher=launcher, members=members, dims=dims, count=count, grid=grid, runs_root=root,
                name=runs.check_name(name), metric=metric, direction=direction, extra=extra)


# ---- the overrides as typed


def _split_overrides(overrides: list[str], extra_hydra: Sequence[str], jobs: int | None) -> tuple[list[str], list[str]]:
    """(task overrides, Hydra overrides): ``--jobs N`` becomes the joblib launcher with N jobs.

    Hydra's output dirs are refused: the sweep folder must hold Hydra's output, or
    ``task`` could not find the sweep a job belongs to.
    """
    hydra_ovr = [o for o in overrides if is_hydra(o)] + list(extra_hydra)
    task = [o for o in overrides if not is_hydra(o)]
    for o in hydra_ovr:
        if key_of(o) in ("hydra.sweep.dir", "hydra.run.dir"):
            raise UserError(
                f"'{o}' is not allowed: peftlab sweep keeps Hydra's output inside the sweep folder; "
                f"choose where runs go with runs_dir=... instead"
            )
    if jobs is None:
        return task, hydra_ovr
    if jobs < 1:
        raise UserError(f"--jobs {jobs} is not allowed: use --jobs N with N >= 1 (parallel runs)")
    chosen = [o.partition("=")[2] for o in hydra_ovr if key_of(o) == "hydra/launcher"]
    if chosen and chosen[-1] != "joblib":
        raise UserError(
            f"--jobs runs the joblib launcher; it cannot be combined with hydra/launcher={chosen[-1]} "
            f"(set that launcher's own parallelism instead)"
        )
    if not chosen:
        hydra_ovr.append("hydra/launcher=joblib")
    hydra_ovr.append(f"hydra.launcher.n_jobs={jobs}")
    return task, hydra_ovr


def _parse(parser: Any, task: list[str], hydra_ovr: list[str]) -> list[Any]:
    """The task overrides, parsed; every override is parsed alone so the error names the one that is wrong."""
    from hydra.errors import HydraException

    parsed = []
    for text in task + hydra_ovr:
        try:
            one = parser.parse_overrides([text])
        except HydraException as exc:
            raise _parse_error(text, exc) from None
        if text in task:
            parsed += one
    return parsed


def _parse_error(text: str, exc: Exception) -> UserError:
    """One line for an override Hydra's grammar rejects: its first line of detail, without the token list."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith(("Error parsing override", "See https"))]
    detail = re.sub(r"\s*expecting \{.*?\}", "", lines[0]).strip() if lines else ""
    return UserError(
        f"cannot parse override '{text}'{' (' + detail + ')' if detail else ''}: "
        f"use key=value or a sweep: key=a,b,c, range(start,stop[,step]), glob(pattern)"
    )


def _check_keys_and_values(parsed: list[Any]) -> None:
    """Refuse an empty key, and an empty value outside a sweep (Hydra's grammar accepts both)."""
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


# ---- Hydra's sweeper and launcher


def _master_config(hydra: Any, task: list[str], hydra_ovr: list[str], config_dirs: list[str]) -> Any:
    """The multirun's master config; composing it validates the hydra/ choices (launcher, sweeper) and settings."""
    from hydra.errors import HydraException
    from hydra.types import RunMode
    from omegaconf.errors import OmegaConfBaseException

    # A placeholder output dir: the sweep folder does not exist yet, and nothing is written here.
    master_overrides = hydra_ovr + our_hydra_settings(hydra_ovr, Path("/nonexistent-peftlab-sweep")) + task
    try:
        return hydra.compose_config("config", overrides=master_overrides + ["hydra.mode=MULTIRUN"],
                                    run_mode=RunMode.MULTIRUN, validate_sweep_overrides=False)
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        raise hydra_error(exc, hydra, master_overrides, config_dirs) from None


def _plugins(master: Any) -> tuple[str, str]:
    """(sweeper, launcher): BASIC, OPTUNA (sweeper only), or the plugin's option name."""
    hchoices = master.hydra.runtime.choices
    sweeper_target = str(master.hydra.sweeper.get("_target_", ""))
    launcher_target = str(master.hydra.launcher.get("_target_", ""))
    sweeper = BASIC if sweeper_target.endswith("BasicSweeper") else _plugin_name(hchoices, "hydra/sweeper", sweeper_target)
    if "optuna" in sweeper_target.lower():
        sweeper = OPTUNA
    launcher = BASIC if launcher_target.endswith("BasicLauncher") else _plugin_name(hchoices, "hydra/launcher", launcher_target)
    return sweeper, launcher


# ---- the grid


def _expand(sweeper: str, master: Any, parser: Any,
            parsed: list[Any]) -> tuple[list[list[str]] | None, list[tuple[str, int]], int | None, list[str]]:
    """(members, dims, count, grid) as the sweeper will see them; members only when the grid decides them."""
    grid = [o.input_line for o in parsed if o.is_sweep_override()]
    swept = [o.get_key_element() for o in parsed if o.is_sweep_override()]
    if sweeper == BASIC:
        return _basic_grid(master, parser, parsed, grid)
    if sweeper == OPTUNA:  # the trials are the sweeper's to choose: only their number is known
        count = int(master.hydra.sweeper.n_trials)
        if count < 1:
            raise UserError(f"hydra.sweeper.n_trials={count} is not allowed: use an integer >= 1")
        params = master.hydra.sweeper.get("params") or {}  # the sweeper's configured params come first
        dims = [(str(k), 0) for k in params] + [(k, 0) for k in swept]
        return None, dims, count, [f"{k}={v}" for k, v in params.items()] + grid
    return None, [(k, 0) for k in swept], None, grid


def _basic_grid(master: Any, parser: Any, parsed: list[Any],
                grid: list[str]) -> tuple[list[list[str]], list[tuple[str, int]], int, list[str]]:
    """Expand the grid as Hydra's basic sweeper will, with the sweeper's configured params first."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.errors import HydraException

    params = master.hydra.sweeper.get("params") or {}
    config_params = [f"{k}={v}" for k, v in params.items()]
    try:
        all_parsed = parser.parse_overrides(config_params) + parsed
        dims = _swept_dims(all_parsed)
        members = [list(m) for batch in BasicSweeper.split_arguments(all_parsed, None) for m in batch]
    except HydraException as exc:
        raise UserError(f"invalid sweep: {str(exc).strip().splitlines()[0]}") from None
    if not members:
        raise UserError("the sweep makes no run: give at least one value to every swept key")
    return members, dims, len(members), config_params + grid


def _swept_dims(all_parsed: list[Any]) -> list[tuple[str, int]]:
    """(key, number of values) of each swept key, a later sweep of a key replacing an earlier one.

    Only discrete, non-empty sweeps make a grid: a search range needs a search sweeper.
    """
    dims: list[tuple[str, int]] = []
    for o in all_parsed:
        if not o.is_sweep_override():
            continue
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
    return dims


# ---- validating the members' configs before any folder exists


def members_to_check(members: list[list[str]], swept: Sequence[str]) -> list[list[str]]:
    """The first member, then one member per other value of each swept key (the other keys as in the first).

    Composing these validates every swept value once: an unknown option, key or
    bad value stops the sweep before any folder exists, at the cost of a few
    compositions rather than one per member.
    """
    checks = [members[0]]
    for key in swept:
        seen = {o for o in members[0] if key_of(o) == key}
        for m in members:
            value = next((o for o in m if key_of(o) == key), None)
            if value is not None and value not in seen and all(
                o == b or key_of(o) == key for o, b in zip(m, members[0])
            ):
                seen.add(value)
                checks.append(m)
    return checks


def _compose_all(checks: list[list[str]], config_dirs: list[str]) -> Any:
    """Compose each list of overrides; returns the config of the last one (the plan's metric, runs_dir and name).

    A failure in any but the first names the swept values that differ from it.
    """
    from peftlab.config import compose

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
    return cfg


# ---- what the plan records


def _direction(hydra_ovr: list[str], metric: str) -> str:
    """Optuna's direction: as given, else the metric's own (lower is better for losses)."""
    given = [o.partition("=")[2] for o in hydra_ovr if key_of(o) == "hydra.sweeper.direction"]
    if given:
        return given[-1]
    from peftlab.metrics import lower_is_better

    return "minimize" if lower_is_better(metric) else "maximize"


def _config_name(cfg: Any, swept: list[str]) -> str:
    """The sweep's name when none is given: the config's name= unless it is swept, else the swept keys."""
    if cfg.get("name") and "name" not in swept:
        return str(cfg.name)
    return default_name(swept)


def default_name(swept: Sequence[str]) -> str:
    """The swept keys, sorted, joined with '-': the same folder whatever order they were typed in."""
    return "-".join(sorted({k.replace("/", "_") for k in swept})) or "sweep"


def our_hydra_settings(user_hydra: Sequence[str], hydra_dir: Path) -> list[str]:
    """The Hydra settings a sweep adds unless the user set them: output inside the sweep folder."""
    given = {key_of(o) for o in user_hydra}
    ours = {
        "hydra.sweep.dir": quote(str(hydra_dir)),
        "hydra.run.dir": quote(str(hydra_dir)),
        "hydra.job.chdir": "False",
        "hydra/job_logging": "disabled",
        "hydra/hydra_logging": "disabled",
    }
    return [f"{k}={v}" for k, v in ours.items() if k not in given]
