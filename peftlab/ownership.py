"""Ownership of a run folder: exactly one live process writes a run.

An exclusive ``flock`` on ``<run>/.owner`` is held for as long as the run is
written. The kernel drops it when the owner dies, however it dies (kill -9
included), so liveness needs no pid guessing; the file also says who holds it
(pid, host, since when) for the message that refuses a second writer.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from peftlab.errors import UserError
from peftlab.files import file_mode, to_json
from peftlab.layout import OWNER_FILE


class RunBusy(UserError):
    """Another live process writes the run."""


class Ownership:
    """The exclusive right of this process to write one run folder (see ``Run.own``)."""

    def __init__(self, run: Any, fd: int | None):
        self.run, self._fd = run, fd

    @classmethod
    def acquire(cls, run: Any, what: str = "run") -> Ownership:
        """Own ``run`` (anything with a ``path`` folder); ``what`` names it in the refusal (a run, a study)."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: exclusive mkdir and pids only
            return cls(run, None)
        fd = os.open(run.path / OWNER_FILE, os.O_RDWR | os.O_CREAT, file_mode())
        if not _locked(fd, fcntl):
            os.close(fd)
            raise RunBusy(_busy_message(run, cls.holder(run) or {}, what)) from None
        info = to_json({"pid": os.getpid(), "host": socket.gethostname(), "since": _now()})
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)
        return cls(run, fd)

    @staticmethod
    def holder(run: Any) -> dict | None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover
            return None
        try:
            fd = os.open(run.path / OWNER_FILE, os.O_RDONLY)
        except OSError:
            return None  # never owned (or an older run): nobody writes it
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
            except ValueError:
                info = {}
            return info if isinstance(info, dict) else {}
        finally:
            os.close(fd)  # also drops the shared lock taken when nobody held it
        return None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> Ownership:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _locked(fd: int, fcntl: Any) -> bool:
    """Take the exclusive lock; False when another process keeps it.

    ``holder`` takes a shared lock for an instant to ask whether anyone owns a run
    (sweeps poll their members that way); an owner arriving in that instant
    waits it out instead of being refused. A real owner keeps its lock for the
    whole run, far longer than the wait.
    """
    import time

    deadline = time.monotonic() + PROBE_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)


PROBE_WAIT_S = 0.5


def held(folder: Path, what: str) -> Ownership:
    """Own ``folder`` (a sweep, a study: ``what``), for a ``with`` block; RunBusy names the holder when another does."""
    return Ownership.acquire(SimpleNamespace(path=Path(folder)), what=what)


def _busy_message(run: Any, info: dict, what: str = "run") -> str:
    who = f"process {info['pid']}" if info.get("pid") else "another process"
    where = f" on {info['host']}" if info.get("host") and info.get("host") != socket.gethostname() else ""
    since = f" since {info['since']}" if info.get("since") else ""
    stop = f" (kill {info['pid']})" if info.get("pid") and not where else ""
    return f"{what} '{run.path}' is being written by {who}{where}{since}: wait for it to end, or stop it first{stop}"


def _now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="seconds")
