"""Small helpers shared by the command modules (no torch)."""

from __future__ import annotations

import sys

from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def fail(message: str) -> None:
    """Print a user error as one line and exit 2 (for checks made in the CLI itself)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)
