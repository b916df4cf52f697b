"""Timestamps of runs and sweeps: written as ISO 8601 in UTC, read back, and shown as an age."""

from __future__ import annotations

from datetime import datetime, timezone


def now_iso() -> str:
    """The current time as ISO 8601 in UTC, e.g. ``2025-01-31T12:00:00+00:00``."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def parse_iso(iso: str | None) -> datetime | None:
    """Parse an ISO timestamp (naive values are taken as UTC); None when unparsable."""
    if not iso or not isinstance(iso, str):
        return None
    try:
        dt = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def age(iso: str | None) -> str:
    """How long ago ``iso`` was, compactly: ``"45s"``, ``"3m"``, ``"2h"``, ``"5d"`` (``"-"`` if unknown)."""
    dt = parse_iso(iso)
    if dt is None:
        return "-"
    seconds = max(0, int((datetime.now(timezone.utc) - dt).total_seconds()))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"
