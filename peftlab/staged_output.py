"""Writing a folder the user asked for, all or nothing: refuse to overwrite what they have, write it
in a hidden staging folder next to it, and move it into place in one rename.

Used by ``peftlab export``; a run folder is never the target.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

from peftlab.errors import UserError
from peftlab.files import file_mode
from peftlab.layout import META_FILE, STUDY_FILE, SWEEP_FILE


def check_output(out: Path, *, force: bool) -> None:
    """Refuse to write over anything the user has, unless ``force`` (and never over a run)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"output '{out}' is a file: pass a folder path for the export")
    if not out.exists() or not any(out.iterdir()):
        return
    if not force:
        raise UserError(f"output folder '{out}' exists and is not empty: choose a new folder or pass --force to replace it")
    resolved = out.resolve()
    if resolved == Path.cwd().resolve() or resolved == Path.home().resolve() or resolved.parent == resolved:
        raise UserError(f"output folder '{out}' is the current, home or root folder: pick a dedicated folder")
    inside = _run_around(resolved)
    if inside is not None:
        raise UserError(f"output folder '{out}' is in run folder '{inside}': --force never replaces what a run "
                        "holds; pick a folder outside the runs")
    held = _record_below(resolved)
    if held is not None:
        raise UserError(f"output folder '{out}' holds {held}: --force never replaces runs, sweeps or studies; "
                        "pick another folder")


RECORDS = (META_FILE, SWEEP_FILE, STUDY_FILE)  # files whose folder is a run, a sweep or a study


def _run_around(folder: Path) -> Path | None:
    """The run folder ``folder`` is, or lies in (its adapter, its checkpoints), if any."""
    for candidate in (folder, *folder.parents):
        if (candidate / META_FILE).is_file():
            return candidate
    return None


def _record_below(folder: Path) -> Path | None:
    """A run, sweep or study record anywhere under ``folder`` (the first found), if any."""
    for here, dirs, files in os.walk(folder):
        found = next((f for f in RECORDS if f in files), None)
        if found is not None:
            return Path(here) / found
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(here, d))]
    return None


def _staging_path(out: Path) -> Path:
    """The hidden folder next to ``out`` where the export is written before it is moved into place."""
    return out.parent / f".{out.name}.export-{os.getpid()}"


def _make_staging(tmp: Path, out: Path) -> None:
    try:
        if tmp.exists():  # left by an earlier process with the same pid
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    except OSError as exc:
        raise UserError(f"cannot write the export next to '{out}' ({exc.strerror or exc}): pick a writable folder") from None


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends (they are delivered then).

    Moving folders into place and removing the staging folder take milliseconds;
    cut in half by a second Ctrl-C they would leave a partial folder behind.
    """
    if not hasattr(signal, "pthread_sigmask"):  # not POSIX: nothing to hold them with
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def staged(out: Path) -> Iterator[Path]:
    """Write into a staging folder; move it to ``out`` on success, remove it on any failure or interrupt.

    BaseException on purpose: Ctrl-C (and SIGTERM, which the CLI turns into
    KeyboardInterrupt) must not leave a half-written copy of the model behind.
    """
    tmp = _staging_path(out)
    try:
        _make_staging(tmp, out)
        yield tmp
        _follow_umask(tmp)
        with _signals_deferred():
            _publish(tmp, out)
    except BaseException:
        with _signals_deferred():
            shutil.rmtree(tmp, ignore_errors=True)
        raise


def _follow_umask(folder: Path) -> None:
    """Give every exported file the mode the umask allows (safetensors writes its files 0600)."""
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(file_mode())


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished export into place; a folder it replaces is moved aside first and removed last.

    Each step is a rename, so ``out`` is at every moment either the old folder
    (or absent) or the complete new one, never a mix.
    """
    old = out.parent / f".{out.name}.replaced-{os.getpid()}" if out.exists() else None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    try:
        tmp.rename(out)
    except BaseException:
        if old is not None:
            old.rename(out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
