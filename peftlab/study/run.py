"""Running a study: every configuration tuned on validation with one budget, the best re-run over seeds.

1. **Tuning**: one sweep of every configuration × every tuned value, at the tuning seed.
2. **Choosing**: each configuration's best setting by the validation metric of its
   kept checkpoint (:mod:`peftlab.study.choose`); written to study.json.
3. **Final**: one sweep of each configuration at its chosen setting with the final
   seeds, which never include the tuning seed: a setting chosen on one seed's
   validation would carry that seed's luck into the reported numbers.

Each phase is an ordinary sweep (its runs ordinary run folders), launched through
the same Hydra launchers. ``continue_study`` picks up where a study stopped: it runs
the tuning members that did not finish, chooses (only once every tuning run has
ended, completed or failed), then the final members that did not finish. A member
that failed for its setting (diverged, invalid) is a result, not redone; one that
failed on storage (a full disk) is run again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftlab import runs
from peftlab.errors import UserError
from peftlab.study import folder
from peftlab.study.choose import Choice, choose, configuration_of, distinguishing, edge_notes
from peftlab.study.spec import Tuned, parse_tune
from peftlab.sweep import BASIC, Member, members, plan, resume, start, start_members
from peftlab.sweep.folder import sweep_ref
from peftlab.sweep.planning import key_of

UNFINISHED = ("pending", "running", "interrupted")
NOT_TUNABLE = {  # keys that say where or which run, not what it computes; the seed is the study's own
    "seed": "a study sets the seeds itself; use --seeds N (and --tune-seed)",
    "name": "the study names its runs; use --name for the study",
    "runs_dir": "use --runs-dir for where the study goes",
    "resume": "a study resumes its runs itself; use peftlab study --continue",
}


@dataclass
class StudyOutcome:
    """Where the study stands after this command: its folder, choices, and how its runs ended."""

    study_dir: Path
    choices: list[Choice] = field(default_factory=list)
    interrupted: bool = False
    failed: int = 0  # tuning and final runs that failed
    final_sweep: Path | None = None


@dataclass
class StudyPlan:
    """A study worked out before anything is created: its name, tuned values, tuning sweep and seeds."""

    name: str
    tuned: list[Tuned]
    tuning: Any  # the tuning sweep's peftlab.sweep.Plan
    seeds: list[int]
    tune_seed: int
    configurations: list[list[str]]

    def describe(self) -> list[str]:
        n = len(self.configurations)
        lines = [f"study {self.name}: {n} configuration(s) x {self.tuning.count // max(n, 1)} setting(s) = "
                 f"{self.tuning.count} tuning run(s) at seed {self.tune_seed}, then {len(self.seeds)} seed(s) "
                 f"({', '.join(map(str, self.seeds))}) of each configuration's best = {n * len(self.seeds)} final run(s)"]
        lines += [f"  tune {t.key}: {', '.join(t.values)}" for t in self.tuned]
        lines += [f"  configuration: {' '.join(c) or '(defaults)'}" for c in self.configurations]
        return lines


def plan_study(overrides: Sequence[str], tune: Sequence[str], *, trials: int, seeds: int, tune_seed: int = 0,
               jobs: int | None = None, name: str | None = None, config_dirs: Sequence[str] = ()) -> StudyPlan:
    """Validate the whole command (a one-line UserError for any mistake); nothing is created."""
    tuned = _check(overrides, tune, trials, seeds)
    grid = list(overrides) + [f"{t.key}={','.join(t.values)}" for t in tuned] + [f"seed={tune_seed}"]
    config_keys = [key_of(o) for o in overrides if "," in o.partition("=")[2]]
    name = runs.check_name(name or ("-".join(config_keys) or "defaults"))
    p = plan(grid, jobs=jobs, config_dirs=config_dirs, name=f"{name}-tune")
    if p.sweeper != BASIC:
        raise UserError(f"a study tunes on a grid: hydra/sweeper={p.sweeper} is not used by peftlab study; "
                        "drop it (--trials sets the budget)")
    configurations = list(dict.fromkeys(tuple(configuration_of(m, [t.key for t in tuned])) for m in p.members))
    return StudyPlan(name, tuned, p, [tune_seed + 1 + i for i in range(seeds)], tune_seed,
                     [list(c) for c in configurations])


def start_study(sp: StudyPlan, *, config_dirs: Sequence[str] = (), jobs: int | None = None,
                argv: Sequence[str] = (), announce: Callable[[str], Any] = print) -> StudyOutcome:
    """Create the study folder and run its phases."""
    p = sp.tuning
    study_dir = folder.create(p.runs_root, sp.name, {
        "tuned": [t.record() for t in sp.tuned], "tune_seed": sp.tune_seed, "seeds": sp.seeds,
        "configurations": sp.configurations, "metric": p.metric,
        "hydra_overrides": p.hydra_overrides + p.extra, "config_dirs": [str(Path(d).resolve()) for d in config_dirs],
        "launcher": p.launcher, "tune_sweep": None, "final_sweep": None, "argv": list(argv),
    })
    announce(sp.describe()[0].replace(f"study {sp.name}:", f"study {sp.name}/{study_dir.name}:"))
    with folder.held(study_dir):
        outcome = start(p, argv=argv, announce=announce,
                        on_created=lambda d: folder.update(study_dir, tune_sweep=sweep_ref(d, p.runs_root)))
        if outcome.interrupted:
            return StudyOutcome(study_dir, interrupted=True)
        return _after_tuning(study_dir, jobs, announce)


def continue_study(spec: str, *, jobs: int | None = None, runs_dir: str | Path | None = None,
                   announce: Callable[[str], Any] = print) -> StudyOutcome:
    """Run what a stopped study still needs: unfinished tuning members, the choice, unfinished final members."""
    study_dir = folder.find_study(spec, runs_dir)
    with folder.held(study_dir):
        return _continue_held(study_dir, jobs, announce)


def _continue_held(study_dir: Path, jobs: int | None, announce: Callable[[str], Any]) -> StudyOutcome:
    data = folder.read(study_dir)
    tune_dir = folder.sweep_path(study_dir, data.get("tune_sweep"))
    if tune_dir is None or not tune_dir.is_dir():
        raise UserError(f"study {study_dir} was stopped before its tuning sweep existed: start the study again")
    if any(_unfinished(m) for m in members(tune_dir)):
        if resume(str(tune_dir), jobs=jobs, announce=announce, rerun_failed=False).interrupted:
            return StudyOutcome(study_dir, interrupted=True)
    final_dir = folder.sweep_path(study_dir, data.get("final_sweep"))
    if final_dir is None:
        return _after_tuning(study_dir, jobs, announce)
    outcome = resume(str(final_dir), jobs=jobs, announce=announce, rerun_failed=False)
    return _outcome(study_dir, interrupted=outcome.interrupted)


def _after_tuning(study_dir: Path, jobs: int | None, announce: Callable[[str], Any]) -> StudyOutcome:
    """Choose on validation, record the choice, and run the final seeds.

    Only on the whole grid: a tuning run can end unfinished without the study being
    interrupted (a worker killed, a launcher's time limit, a resume that failed), and a
    choice among the settings that happened to finish would be a different study.
    """
    data = folder.read(study_dir)
    tuned = [Tuned.from_record(t) for t in data["tuned"]]
    tune_dir = folder.sweep_path(study_dir, data["tune_sweep"])
    tuning = members(tune_dir)
    unfinished = [m for m in tuning if _unfinished(m)]
    if unfinished:
        how = sorted({"failed on storage" if m.retryable else m.status for m in unfinished})
        announce(f"{len(unfinished)} of {len(tuning)} tuning run(s) did not finish ({', '.join(how)}): "
                 "nothing is chosen on part of the grid")
        return StudyOutcome(study_dir, interrupted=True)
    choices = choose(tuning, [t.key for t in tuned], str(data["metric"]))
    for c, label in zip(choices, distinguishing([c.configuration for c in choices])):
        if c.setting:
            announce(f"chosen on validation {data['metric']} = {c.validation:.4g}: {label} {' '.join(c.setting)}")
        else:
            announce(f"no tuning run of {label} completed: it has no final runs")
    for note in edge_notes(choices, tuned):
        announce(note)
    final = [c.configuration + c.setting + [f"seed={s}"] for c in choices if c.setting for s in data["seeds"]]
    folder.update(study_dir, chosen=[c.record() for c in choices])
    if not final:
        return _outcome(study_dir)
    root = folder.runs_root_of(study_dir)
    outcome = start_members(
        root, f"{data['name']}-final", final, hydra_overrides=list(data["hydra_overrides"]),
        config_dirs=list(data["config_dirs"]), launcher=str(data["launcher"]), metric=str(data["metric"]),
        argv=list(data.get("argv") or []), announce=announce, jobs=jobs,
        on_created=lambda d: folder.update(study_dir, final_sweep=sweep_ref(d, root)))
    return _outcome(study_dir, interrupted=outcome.interrupted)


def _unfinished(member: Member) -> bool:
    """Not a result yet: pending, running, interrupted, or failed on storage (a full disk says
    nothing about the setting; a diverged or invalid setting is a result)."""
    return member.status in UNFINISHED or member.retryable


def _outcome(study_dir: Path, interrupted: bool = False) -> StudyOutcome:
    """The study as its sweeps' run folders say."""
    data = folder.read(study_dir)
    sweeps = [folder.sweep_path(study_dir, data.get(k)) for k in ("tune_sweep", "final_sweep")]
    failed = sum(m.status == "failed" for s in sweeps if s is not None for m in members(s))
    choices = [Choice(**c) for c in data.get("chosen") or []]
    return StudyOutcome(study_dir, choices, interrupted, failed, sweeps[1])


def _check(overrides: Sequence[str], tune: Sequence[str], trials: int, seeds: int) -> list[Tuned]:
    """Every mistake in the command as a one-line UserError, before anything is created."""
    if not tune:
        raise UserError("a study needs --tune KEY=SPEC, e.g. --tune 'optimizer.lr=tag(log,interval(1e-5,1e-2))'")
    if seeds < 1:
        raise UserError(f"--seeds {seeds} is not allowed: use --seeds N with N >= 1 (final runs per configuration)")
    tuned = [parse_tune(t, trials) for t in tune]
    keys = [t.key for t in tuned]
    for key in keys:
        if key in NOT_TUNABLE:
            raise UserError(f"--tune {key}=...: {NOT_TUNABLE[key]}")
    if len(set(keys)) < len(keys):
        raise UserError(f"--tune names a key twice ({', '.join(sorted(k for k in set(keys) if keys.count(k) > 1))}): "
                        "give each tuned key once")
    for o in overrides:
        if key_of(o) == "seed":
            raise UserError(f"'{o}': a study sets the seeds itself; use --seeds N (and --tune-seed) instead")
        if key_of(o) in keys:
            raise UserError(f"'{o}' sets {key_of(o)}, which --tune searches: drop one of them")
    return tuned


def _describe(t: Tuned) -> str:
    return f"{len(t.values)} value(s) of {t.key}"
