"""The one exception type for user mistakes.

A ``UserError`` is something the user can fix (a bad value, a missing file, an
unknown option). The CLI prints its message as one line and exits with code 2,
without a traceback. Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A mistake in what the user asked for; the message says how to fix it."""


class StorageError(UserError):
    """The file system failed (full, read-only, not writable): the machine's doing, not the config's."""


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or ``""``."""
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by a signal (or its sweep's end), checkpointed and marked interrupted."""

    def __init__(self, run_path: str, step: int, total: int, reason: str, checkpoint: str | None, exit_code: int):
        super().__init__(reason)
        self.run_path, self.step, self.total = run_path, step, total
        self.reason, self.checkpoint, self.exit_code = reason, checkpoint, exit_code


_NO_SPACE = ("No space left on device", "StorageFull", "Disk quota exceeded")


def storage_problem(exc: BaseException) -> str | None:
    """One line for a failure of the file system (full, read-only, not writable), or None.

    Libraries that write through their own code (safetensors, torch.save) report
    a full disk in their own words; those words are recognised too.
    """
    import errno

    path = getattr(exc, "filename", None)
    where = f" '{path}'" if path else ""
    code = getattr(exc, "errno", None)
    text = str(exc)
    if code in (errno.ENOSPC, errno.EDQUOT) or any(s in text for s in _NO_SPACE):
        return (f"no space left on the device writing{where}: free some space (old runs' checkpoints/ folders "
                f"are the largest files) or point runs_dir= at another disk")
    if code == errno.EROFS or "Read-only file system" in text:
        return (f"cannot write{where}: the file system is read-only; point runs_dir= (or PEFTLAB_RUNS_DIR) "
                f"at a writable folder")
    if code in (errno.EACCES, errno.EPERM):
        return f"permission denied writing{where}: point runs_dir= at a folder you can write, or fix its permissions"
    if code == errno.ENOENT and path:
        return f"cannot create{where}: a folder on that path does not exist (or cannot hold folders); check runs_dir="
    if code == errno.ENOTDIR and path:
        return f"cannot write{where}: a part of that path is a file, not a folder; pick another path"
    if code == errno.EISDIR and path:
        return f"cannot write{where}: it is a folder where a file was to be written; pick a file path"
    if code == errno.EEXIST and path:
        return f"cannot create{where}: something of that name is already there; pick another path"
    return None
