"""The run store: where run folders live, their versions, allocation, lookup and listing.

A store is a folder ``<root>/<name>/v<N>/`` of run folders; each is read
through :class:`peftlab.run_folder.Run` (re-exported here with the helpers
commands use, so ``runs.Run``, ``runs.resolve`` and ``runs.allocate`` are one
import). Versions are allocated with an exclusive ``os.mkdir`` so concurrent
processes never share a folder.

No torch (nor transformers/datasets/accelerate) is imported here, so listing and
showing runs stays fast.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable
from pathlib import Path

from peftlab.errors import UserError, did_you_mean
from peftlab.files import (  # noqa: F401  (part of the store's API)
    atomic_write_json,
    atomic_write_text,
    file_mode,
    finite_or_none,
    to_json,
    write_bytes,
)
from peftlab.layout import META_FILE, OWNER_FILE, SWEEP_FILE
from peftlab.ownership import Ownership, RunBusy  # noqa: F401  (part of the store's API)
from peftlab.provenance import environment, git_info, new_meta, pid_alive, process_start  # noqa: F401  (part of the store's API)
from peftlab.run_folder import (  # noqa: F401  (part of the store's API)
    FAILURES, RETRYABLE_FAILURES, STATUSES, TERMINAL, Run, read_jsonl)
from peftlab.timestamps import age, now_iso, parse_iso  # noqa: F401  (part of the store's API)

_VERSION = re.compile(r"^v(\d+)$")

RUNS_DIR_ENV = "PEFTLAB_RUNS_DIR"
DEFAULT_RUNS_DIR = "runs"


def runs_root(runs_dir: str | Path | None = None) -> Path:
    """Where run folders live: ``runs_dir`` if given, else ``$PEFTLAB_RUNS_DIR``, else ``./runs``.

    The one place that decides: the config's ``runs_dir`` (null by default), the
    ``--runs-dir`` option of every command and the environment all come here.
    """
    if runs_dir:
        return Path(runs_dir).expanduser()
    env = os.environ.get(RUNS_DIR_ENV)
    return Path(env).expanduser() if env else Path(DEFAULT_RUNS_DIR)


def version_number(version: str) -> int | None:
    """``"v12"`` -> 12; None for anything that is not a version folder name."""
    m = _VERSION.match(version)
    return int(m.group(1)) if m else None


def check_name(name: str) -> str:
    name = str(name) if name is not None else ""
    bad = (
        not name.strip()
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or (os.sep in name)
        or (os.altsep is not None and os.altsep in name)
        or "\0" in name
    )
    if bad:
        raise UserError(
            f"name={name!r} is not allowed: name= must be a plain folder name "
            f"(no '/' or '\\', not empty), e.g. name=lora-r8"
        )
    return name


def versions(folder: Path) -> list[tuple[int, str]]:
    """``[(N, "vN")]`` of the version folders in ``folder``, sorted numerically."""
    out = []
    try:
        entries = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    for entry in entries:
        n = version_number(entry)
        if n is not None:
            out.append((n, entry))
    return sorted(out)


def allocate(root: str | Path, name: str) -> Run:
    """Create and return a new run folder ``root/name/vN`` with N = 1 + the highest existing.

    The folder is created with an exclusive ``os.mkdir``; when another process
    wins a number, the next one is tried, so concurrent runs never share a folder.
    """
    name = check_name(name)
    parent = Path(root) / name
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except NotADirectoryError:
        raise UserError(f"cannot create run folder under '{parent}': a file is in the way") from None
    existing = versions(parent)
    n = (existing[-1][0] if existing else 0) + 1
    for _ in range(100_000):
        path = parent / f"v{n}"
        try:
            os.mkdir(path)
        except FileExistsError:
            n += 1
            continue
        return Run(path)
    raise RuntimeError(f"could not allocate a version under {parent}")


def discard(run: Run) -> None:
    """Remove a run folder that never started (e.g. the disk filled while it was being set up)."""
    import shutil

    shutil.rmtree(run.path, ignore_errors=True)
    try:
        run.path.parent.rmdir()  # the name's folder too, when this was its only version
    except OSError:
        pass


def open_run(path: str | Path) -> Run:
    """The run at ``path``; UserError when the folder has no meta.json."""
    path = Path(path)
    if not (path / META_FILE).is_file():
        raise UserError(
            f"'{path}' is not a run folder (no {META_FILE}): pass a folder like runs/<name>/v<N>, "
            f"or a run name; list them with `peftlab runs`"
        )
    return Run(path)


def _started_ts(run: Run) -> float:
    dt = parse_iso(run.started_at)
    if dt is not None:
        return dt.timestamp()
    try:
        return run.meta_path.stat().st_mtime
    except OSError:
        return 0.0


def newest_first(runs: list[Run]) -> list[Run]:
    """``runs`` sorted by started_at, newest first (versions of one name break ties)."""
    keyed = [(_started_ts(r), version_number(r.version) or 0, r) for r in runs]
    keyed.sort(key=lambda t: (t[0], t[1]), reverse=True)
    return [r for _, _, r in keyed]


def list_runs(root: str | Path) -> list[Run]:
    """Every run of the store at ``root`` (``root/<name>/v<N>/meta.json``), newest first by started_at."""
    root = Path(root)
    runs = []
    try:
        names = sorted(os.scandir(root), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return []
    for entry in names:
        if not entry.is_dir():
            continue
        for _, version in versions(Path(entry.path)):
            folder = Path(entry.path) / version
            if (folder / META_FILE).is_file():
                runs.append(Run(folder))
    return newest_first(runs)


def is_run_folder(folder: Path) -> bool:
    """A folder holding meta.json (and not sweep.json: a sweep folder is not a run)."""
    return (folder / META_FILE).is_file() and not (folder / SWEEP_FILE).is_file()


def walk_runs(folder: str | Path) -> list[Run]:
    """Every run folder in ``folder`` at any depth, in path order; run folders are not searched further."""
    found: list[Run] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        # the listing os.walk already made, rather than two stat calls per folder
        if META_FILE in filenames and SWEEP_FILE not in filenames:
            found.append(Run(dirpath))
            dirnames[:] = []  # a run folder holds no runs (skip adapter/, checkpoints/)
        else:
            dirnames.sort()
    return found


def run_names(root: str | Path) -> list[str]:
    """Names of the run folders under ``root`` that hold at least one run."""
    root = Path(root)
    try:
        entries = list(os.scandir(root))
    except (FileNotFoundError, NotADirectoryError):
        return []
    names = []
    for entry in entries:
        if entry.is_dir() and any(
            (Path(entry.path) / v / META_FILE).is_file() for _, v in versions(Path(entry.path))
        ):
            names.append(entry.name)
    return sorted(names)


def _latest(folder: Path) -> Run | None:
    for _, version in reversed(versions(folder)):
        if (folder / version / META_FILE).is_file():
            return Run(folder / version)
    return None


def typed_folder(text: str, root: Path, accept: Callable[[Path], bool] = Path.is_dir) -> Path | None:
    """The folder ``text`` names, as a path from here or under the runs folder ``root``; None when neither.

    A bare name (``lora-minilm-stdlib_docs``) may be either; a path written as one
    (absolute, ``./``, ``../``, ``~``) is only itself. A bare name that is a folder in
    both places (two different ones) is a UserError: every command must read the one
    the user meant, and commands that each picked one would disagree.
    """
    path = Path(text).expanduser()
    explicit = path.is_absolute() or text.startswith(("./", "../", "~"))
    found: dict[Path, Path] = {}
    for candidate in ([path] if explicit else [root / text, path]):
        if accept(candidate):
            found.setdefault(candidate.resolve(), candidate)
    if len(found) > 1:
        under, here = found.values()
        raise UserError(f"'{text}' names two folders, '{under}' under the runs folder and '{here}' here: "
                        f"write './{text}' for the one here, or its full path")
    return next(iter(found.values()), None)


def resolve(spec: str | Path, root: str | Path) -> Run:
    """Find a run from what the user typed.

    ``spec`` is a path to a run folder, a run ``name`` (its latest version), or
    ``name/vN``. Anything else is a UserError with a did-you-mean.
    """
    root = Path(root)
    text = str(spec).strip()
    if not text:
        raise UserError("no run given: pass a run name, name/vN, or a run folder (see `peftlab runs`)")
    path = Path(text).expanduser()

    # 1. a run folder (or a folder of versions) on disk
    found = typed_folder(text, root, lambda c: (c / META_FILE).is_file() or (c.is_dir() and bool(versions(c))))
    if found is not None:
        if (found / META_FILE).is_file():
            return Run(found)
        latest = _latest(found)
        if latest is not None:
            return latest

    names = run_names(root)
    head, sep, tail = text.rstrip("/").rpartition("/")
    # 2. name/vN whose version is missing
    if sep and version_number(tail) is not None and (root / head).is_dir():
        known = [v for _, v in versions(root / head) if (root / head / v / META_FILE).is_file()]
        if known:
            raise UserError(
                f"run '{head}' has no version '{tail}'{did_you_mean(tail, known)}; "
                f"its versions: {', '.join(known)}"
            )
    # 3. a path that exists but is not a run
    if path.is_dir() and not (path / META_FILE).is_file() and (sep or path.is_absolute() or text.startswith(".")):
        open_run(path)  # raises the "is not a run folder" UserError

    wanted = head if sep and version_number(tail) is not None else text
    hint = did_you_mean(wanted, names)
    if names:
        shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
        where = f"runs under '{root}': {shown}"
    else:
        where = f"no runs under '{root}' yet (start one with `peftlab train`, or pass --runs-dir)"
    raise UserError(f"unknown run '{text}'{hint}; {where}")


def is_stale(run: Run) -> bool:
    """A run marked running that no live process writes any more (killed without a trace)."""
    meta = run.meta
    if meta.get("status") != "running":
        return False
    if (run.path / OWNER_FILE).exists():
        return run.owner() is None
    host = meta.get("host") or (meta.get("environment") or {}).get("hostname")
    if host != socket.gethostname():
        return False
    return pid_alive(meta.get("pid"), meta.get("pid_start")) is False


def is_live(run: Run) -> bool:
    """Whether a live process may still write the run (its flock is held, or it runs and is not stale)."""
    if run.owner() is not None:
        return True
    return run.status == "running" and not is_stale(run)
