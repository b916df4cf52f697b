"""Writing files so that a crash, a full disk or a reader never sees half of one.

Text is written to a temporary file next to its target, fsynced and renamed
over it; JSON is strict (no NaN or Infinity tokens: non-finite numbers become
null); binary payloads go through Python's own I/O so that a full disk is an
``OSError`` naming the file; every file gets the mode the umask allows. No torch.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any


def finite_or_none(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, ±inf) replaced by None, recursively.

    JSON has no NaN: ``json.dumps`` would write the bare token ``NaN``, which strict
    readers (and other languages) refuse. A missing value is what it is.
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def to_json(obj: Any, indent: int | None = None) -> str:
    """Strict JSON text of ``obj``: non-finite numbers become null, other objects their value or str."""
    return json.dumps(finite_or_none(_plain(obj)), indent=indent, allow_nan=False, default=_json_default)


def _plain(obj: Any) -> Any:
    # Scalars from numpy/torch become Python numbers first, so finite_or_none sees them.
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return _json_default(obj)


def _json_default(obj: Any) -> Any:
    # numpy / torch scalars have .item(); paths and the rest become strings.
    item = getattr(obj, "item", None)
    if callable(item):
        try:
            return item()
        except Exception:  # noqa: BLE001 - fall back to str below
            pass
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)


def _fsync_dir(folder: Path) -> None:
    # Make the rename itself durable; not possible on every platform, so best effort.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to a temporary file next to ``path``, fsync it, and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, file_mode())  # mkstemp makes 0600; run files follow the umask like any other
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through Python's own I/O.

    Libraries that write files themselves report a full disk as an unrelated
    error (a zip writer's "unexpected pos", a Rust I/O error); serialising to
    bytes first and writing them here turns it into an ``OSError`` with its
    errno and the file's name, which the lab can explain in one line.
    """
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as exc:
        if exc.filename is None:
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """``atomic_write_text`` of ``obj`` as indented, strict JSON (see ``to_json``)."""
    atomic_write_text(path, to_json(obj, indent=2) + "\n")


_FILE_MODE: int | None = None


def file_mode() -> int:
    """The mode a new file gets under this process's umask (0644 under the usual 022)."""
    global _FILE_MODE
    if _FILE_MODE is None:
        mask = os.umask(0)
        os.umask(mask)
        _FILE_MODE = 0o666 & ~mask
    return _FILE_MODE
