"""A run's life: open or allocate its folder, build it, train it, and record how it ended.

``train`` is what ``peftlab train`` and every sweep member call. Under a
launcher of several processes the main process opens the run folder and the
others learn it (see :mod:`peftlab.processes`); the loop itself is
:class:`peftlab.trainer.Trainer`. Every way out, signal, non-finite number,
user error or full disk, leaves the run's status saying how it ended.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf

from peftlab import checkpoints, runs, stopping
from peftlab.errors import RunInterrupted, StorageError, UserError, storage_problem
from peftlab.experiment import Experiment, build_experiment, save_adapter
from peftlab.naming import run_name
from peftlab.nonfinite import NonFinite
from peftlab.processes import Processes, start as start_processes
from peftlab.trainer import Trainer, warn as _warn

__all__ = ["Trainer", "config_hash", "train"]

#: Keys a resumed run may change: its length and how it treats non-finite steps.
RESUMABLE_KEYS = ("trainer.max_steps", "trainer.nonfinite", "trainer.max_consecutive_skips")


def train(cfg: DictConfig, *, overrides: list[str], argv: list[str], choices: dict[str, str],
          show_progress: bool = True, on_run: Callable[[runs.Run], None] | None = None,
          stamp: dict[str, Any] | None = None) -> runs.Run:
    """Train one run (or resume one) and return its completed run folder.

    Raises ``RunInterrupted`` (a KeyboardInterrupt) when a signal stopped it, and
    ``UserError`` when it failed for a reason the user can act on; either way the
    run folder says how it ended. ``on_run`` is called with the run folder as soon
    as it exists. ``stamp`` is written into a new run's meta.json when its folder
    is allocated: what the run belongs to (a sweep and its member index, ...).
    """
    import warnings

    warnings.filterwarnings("ignore")
    procs = start_processes(bool(cfg.trainer.cpu))  # under a launcher: join the run's other processes
    with stopping.deferred_signals():
        owner: runs.Ownership | None = None
        try:
            run, owner, cfg, checkpoint = _opened(procs, cfg, overrides) if cfg.get("resume") else (None, None, cfg, None)
            exp = _build(cfg)
            if procs.rank:  # the same model everywhere, but each process its own dropout masks
                torch.manual_seed(int(cfg.seed) + 1_000_003 * procs.rank)
            if procs.any(stopping.requested()):
                raise KeyboardInterrupt()
            if run is None:
                run, owner = _allocated(procs, cfg, overrides, argv, choices, stamp or {})
            elif procs.is_main:
                run.set_status("running", resumed_from=checkpoint.name if checkpoint else None)
                _record_resume(run, cfg, overrides, checkpoint.step if checkpoint else 0)
            if on_run is not None and procs.is_main:
                on_run(run)
            _run_training(exp, run, checkpoint, procs, quiet=not show_progress)
            procs.wait_for_everyone()  # no process reports the run before the main one has written it
            return run
        except OSError as exc:  # before the run existed, e.g. runs_dir on a read-only disk
            message = storage_problem(exc)
            if message is None:
                raise
            raise StorageError(message) from None
        finally:
            if owner is not None:
                owner.release()


def _on_main(procs: Processes, make: Callable[[], Any], told: Callable[[Any], Any]) -> tuple[Any, Any]:
    """(``make()`` on the main process, None on the others; ``told(result)`` on every process).

    A failure on the main process reaches the others as a UserError with its message,
    so no process waits forever for a run folder that will not come.
    """
    if procs.is_main:
        try:
            result = make()
        except BaseException as exc:
            procs.share(("failed", str(exc) or type(exc).__name__))
            raise
        return result, procs.share(("ok", told(result)))[1]
    kind, value = procs.share(None)
    if kind == "failed":
        raise UserError(value)
    return None, value


def _opened(procs: Processes, cfg: DictConfig, overrides: list[str]) -> tuple[runs.Run, runs.Ownership | None,
                                                                              DictConfig, checkpoints.Checkpoint | None]:
    """The run to resume, reopened by the main process; the others learn it, its config and checkpoint."""
    opened, (path, stored, checkpoint, step) = _on_main(
        procs, lambda: _reopen(cfg, overrides),
        lambda o: (str(o[0].path), OmegaConf.to_yaml(o[2]), o[3] and str(o[3].path), o[3] and o[3].step))
    if opened is not None:
        return opened
    start = checkpoints.Checkpoint(Path(checkpoint), step) if checkpoint else None
    return runs.open_run(path), None, OmegaConf.create(stored), start


def _allocated(procs: Processes, cfg: DictConfig, overrides: list[str], argv: list[str], choices: dict[str, str],
               stamp: dict[str, Any]) -> tuple[runs.Run, runs.Ownership | None]:
    """A new run folder, created by the main process; the others learn its path."""
    created, path = _on_main(procs, lambda: _create(cfg, overrides, argv, choices, stamp), lambda c: str(c[0].path))
    return created if created is not None else (runs.open_run(path), None)


def _reopen(cfg: DictConfig, overrides: list[str]) -> tuple[runs.Run, runs.Ownership, DictConfig,
                                                             checkpoints.Checkpoint | None]:
    """The run to resume, owned by this process, its stored config and the checkpoint to start from.

    A run stopped before its first checkpoint is trained again in its own folder from step 0
    (checkpoint None): its build is seeded, so that is the run it would have been. A run whose
    checkpoints are all damaged is not: those may be repairable, and are left for the user.
    """
    from peftlab.config import validate

    run = runs.resolve(str(cfg.resume), runs.runs_root(cfg.runs_dir))
    owner = run.own()
    try:
        if run.status == "completed":
            raise UserError(f"run '{run.path}' is already completed: start a new run instead of resume=")
        checkpoint = checkpoints.newest_sound(run.checkpoints_dir, warn=_warn)
        if checkpoint is None and checkpoints.listed(run.checkpoints_dir):
            raise UserError(f"run '{run.path}' has no usable checkpoint to resume from: start it again")
        try:
            stored = OmegaConf.load(run.config_path)
        except Exception as exc:  # noqa: BLE001 - any damage to the file
            raise UserError(f"cannot read {run.config_path} ({type(exc).__name__}): the run cannot be resumed") from None
        _refuse_changes(cfg, stored, overrides, run)
        if checkpoint is not None and _overrides_key(overrides, "trainer.max_steps") \
                and int(cfg.trainer.max_steps) < checkpoint.step:
            raise UserError(f"trainer.max_steps={cfg.trainer.max_steps} is below step {checkpoint.step}, where run "
                            f"'{run.label}' resumes: give trainer.max_steps >= {checkpoint.step} (or start a new run)")
        for key in RESUMABLE_KEYS:
            if _overrides_key(overrides, key):
                OmegaConf.update(stored, key, OmegaConf.select(cfg, key), force_add=True)
        validate(stored)
        if checkpoint is None:
            _warn(f"run '{run.path}' stopped before its first checkpoint: training it again from step 0")
            run.truncate_metrics(0)
        return run, owner, stored, checkpoint
    except BaseException:
        owner.release()
        raise


def _build(cfg: DictConfig) -> Experiment:
    """Seeded build of data, model and method; every user mistake there surfaces before a folder exists."""
    from peftlab import trackers

    trackers.check(list(cfg.trainer.get("log_with") or []))
    if cfg.trainer.precision == "fp16" and (cfg.trainer.cpu or not torch.cuda.is_available()):
        raise UserError("trainer.precision=fp16 needs a GPU: use trainer.precision=bf16 or fp32 on the CPU")
    torch.manual_seed(int(cfg.seed))
    if cfg.trainer.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    return build_experiment(cfg)


def _create(cfg: DictConfig, overrides: list[str], argv: list[str], choices: dict[str, str],
            stamp: dict[str, Any]) -> tuple[runs.Run, runs.Ownership]:
    """A new run folder, owned by this process; nothing is left behind if setting it up fails."""
    run = runs.allocate(runs.runs_root(cfg.runs_dir), run_name(cfg, choices))
    owner = None
    try:
        owner = run.own()
        run.write_config(OmegaConf.to_yaml(cfg, resolve=True), overrides)
        run.write_meta(**runs.new_meta(argv, int(cfg.seed)), choices=choices, config_hash=config_hash(cfg), **stamp)
    except BaseException:
        if owner is not None:
            owner.release()
        runs.discard(run)
        raise
    return run, owner


def _run_training(exp: Experiment, run: runs.Run, checkpoint: checkpoints.Checkpoint | None, procs: Processes, *,
                  quiet: bool) -> None:
    """Train, then write the result; every way out leaves the run's status saying how it ended
    (written by the main process: the others only train and evaluate)."""
    trainer = None
    mark = _mark if procs.is_main else (lambda *args, **fields: None)
    try:
        if procs.is_main:
            _report_data(exp)
        trainer = Trainer(exp, run, procs, checkpoint=checkpoint, quiet=quiet)
        if procs.is_main:
            calibration = getattr(exp.calibration, "record", None)  # kept from the first start on a resume
            run.write_meta(device=str(trainer.accelerator.device), processes=procs.world,
                           **({"calibration": calibration} if calibration and "calibration" not in run.meta else {}))
        with trainer.progress:
            summary = trainer.finish() if trainer.fit() else None
        if summary is None:
            raise _interrupted(run, trainer, trainer.checkpoint())
        if procs.is_main:
            _complete(exp, run, summary)
    except RunInterrupted as exc:
        mark(run, "interrupted", step=exc.step, error=None)
        raise
    except KeyboardInterrupt:  # a second signal: stop now, from the last checkpoint on disk
        last = checkpoints.listed(run.checkpoints_dir)
        exc = _interrupted(run, trainer, last[-1] if last else None)
        mark(run, "interrupted", step=exc.step)
        raise exc from None
    except NonFinite as exc:
        mark(run, "failed", error=str(exc), failure="nonfinite")
        raise UserError(f"run {run.path} failed: {exc}") from None
    except UserError as exc:
        mark(run, "failed", error=str(exc), failure="storage" if isinstance(exc, StorageError) else "invalid")
        raise
    except BaseException as exc:  # a full or read-only disk is explained; anything else is a bug, kept whole
        message = storage_problem(exc)
        mark(run, "failed", error=message or f"{type(exc).__name__}: {exc}", failure="storage" if message else "crash")
        if message:
            raise StorageError(message) from None
        raise


def _report_data(exp: Experiment) -> None:
    """Examples cut or dropped by the model's max_length are said, never silent."""
    for split, counts in (exp.task.data_report or {}).items():
        cut, dropped = int(counts.get("truncated", 0)), int(counts.get("dropped", 0))
        if cut or dropped:
            _warn(f"{split}: {cut} of {counts.get('examples')} examples truncated and {dropped} dropped at "
                  f"model.max_length={exp.loaded.max_length} (raise it to keep them whole)")


def _interrupted(run: runs.Run, trainer: Trainer | None, checkpoint: checkpoints.Checkpoint | None) -> RunInterrupted:
    total = trainer.max_steps if trainer else 0
    step = checkpoint.step if checkpoint else 0
    return RunInterrupted(str(run.path), step, total, stopping.reason() or "SIGINT",
                          str(checkpoint.path) if checkpoint else None, stopping.exit_code())


def _mark(run: runs.Run, status: str, **fields: Any) -> None:
    """Record how the run ended; best effort, since the disk may be what failed."""
    try:
        run.set_status(status, **{k: v for k, v in fields.items() if v is not None})
    except OSError:
        pass


def _complete(exp: Experiment, run: runs.Run, summary: dict) -> None:
    save_adapter(exp, run.adapter_dir)
    ranks = exp.method.final_ranks(exp.model)  # of the selected weights: adapter/ holds them now
    if ranks:  # the full map in ranks.json; summary.json (shown by `peftlab show`) says how they spread
        runs.atomic_write_json(run.ranks_path, {"ranks": ranks})
        values = list(ranks.values())
        summary = {**summary, "adapter_ranks": {"min": min(values), "mean": sum(values) / len(values),
                                                "max": max(values), "without_adapter": values.count(0)}}
    if exp.cfg.get("analysis"):
        from peftlab.analysis.run import analyze_experiment

        runs.atomic_write_json(run.analysis_path, analyze_experiment(exp))
    run.write_summary(summary)
    run.set_status("completed")
    # Only now: until the run is completed, a failure above leaves it to resume, which selects from best/ again.
    shutil.rmtree(run.best_dir, ignore_errors=True)


def _record_resume(run: runs.Run, cfg: DictConfig, typed: list[str], step: int) -> None:
    """The resumed run's config, overrides and hash, with the resumable keys changed now.

    From step 0 the run is trained as if started so: its records are a plain run's. Changed
    mid-run, a key's old value has shaped what was trained so far (max_steps sets the
    schedule's warm-up and decay), so meta.json keeps ``changed_on_resume`` (the step, the
    old and the new value) and the hash covers it: no such run claims a fresh run's hash.
    """
    stored = OmegaConf.load(run.config_path)
    changes = {key: [_plain(OmegaConf.select(stored, key, default=None)), _plain(OmegaConf.select(cfg, key))]
               for key in RESUMABLE_KEYS if _overrides_key(typed, key)}
    changes = {key: pair for key, pair in changes.items() if pair[0] != pair[1]}
    history = list(run.meta.get("changed_on_resume") or [])
    if changes and step > 0:
        history.append({"step": step, **changes})
    run.write_config(OmegaConf.to_yaml(cfg, resolve=True), _resumed_overrides(run.overrides(), typed))
    run.write_meta(config_hash=config_hash(cfg, history), **({"changed_on_resume": history} if history else {}))


def config_hash(cfg: DictConfig, changed_on_resume: list | None = None) -> str:
    """A short hash of what the run computes: the resolved config without where it is stored or
    what it is called, so two runs with the same hash differ only by chance (none, when seeded);
    with the resumable keys a resume changed mid-run (see ``_record_resume``)."""
    import hashlib
    import json

    plain = OmegaConf.to_container(cfg, resolve=True)
    for key in ("name", "runs_dir", "resume"):
        plain.pop(key, None)
    if changed_on_resume:
        plain["changed_on_resume"] = changed_on_resume
    text = json.dumps(runs.finite_or_none(plain), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


NOT_THE_RUNS_CONFIG = ("resume", "runs_dir", "name")  # where to find and call it, not what it computes


def _refuse_changes(cfg: DictConfig, stored: DictConfig, overrides: list[str], run: runs.Run) -> None:
    """A resume continues the run as it was configured: a typed key whose value differs is refused.

    Silently dropped, it would leave the user believing the run now trains with it. The
    run's own overrides, typed again (a sweep's --continue does), are the same values: fine.
    """
    from peftlab.config import GROUPS

    for typed in overrides:
        key = _typed_key(typed)
        if key in RESUMABLE_KEYS or key in NOT_THE_RUNS_CONFIG or key.startswith("hydra"):
            continue
        now, then = (_plain(OmegaConf.select(c, key, default=None)) for c in (cfg, stored))
        chosen = (run.meta.get("choices") or {}).get(key) if key in GROUPS else None
        if isinstance(chosen, str):  # a group: the same choice, whatever its YAML says today
            if typed.partition("=")[2].strip() != chosen:
                raise _changed(run, typed, key, chosen)
            if now != then:
                _warn(f"configs/{key}/{chosen}.yaml has changed since run '{run.label}' started: the resume "
                      "continues with the run's own config.yaml")
            continue
        if now != then:
            raise _changed(run, typed, key, _shown(then))


def _changed(run: runs.Run, typed: str, key: str, then: str) -> UserError:
    return UserError(f"resume= continues run '{run.label}' as it was configured: '{typed}' differs from its "
                     f"{key}={then}; only {', '.join(RESUMABLE_KEYS)} may change (start a new run for the rest)")


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _shown(value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, (dict, list)):
        return "(its own)"  # a whole group: its values would not fit the line
    return str(value)


def _typed_key(override: str) -> str:
    """``optimizer.lr`` of ``optimizer.lr=1e-3``, ``+optimizer.lr=...`` or ``~optimizer.lr``."""
    return override.split("=", 1)[0].lstrip("+~")


def _resumed_overrides(stored: list[str], typed: list[str]) -> list[str]:
    """The run's overrides with each resumable key typed on this resume in place of its old value,
    so overrides.txt keeps saying how the config.yaml beside it came to be."""
    changed = [o for o in typed if _typed_key(o) in RESUMABLE_KEYS]
    keys = {_typed_key(o) for o in changed}
    return [o for o in stored if _typed_key(o) not in keys] + changed


def _overrides_key(overrides: list[str], key: str) -> bool:
    return any(_typed_key(o) == key for o in overrides)
