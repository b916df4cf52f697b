"""Small helpers shared by the command modules (no torch)."""

from __future__ import annotations

import sys
from typing import Any, Optional

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)

RUNS_DIR_HELP = "where runs live (default: $PEFTLAB_RUNS_DIR, else ./runs)"


def runs_dir_option() -> Any:
    """The ``--runs-dir`` option, the same on every command that reads runs (see ``runs.runs_root``)."""
    return typer.Option(None, "--runs-dir", help=RUNS_DIR_HELP)


def where_option(example: str = "method=lora,pissa, 'method.rank>=8', status=failed") -> Any:
    """The ``--where`` option of the commands that select runs (syntax: ``peftlab.where``)."""
    return typer.Option(None, "--where", "-w", help=f"filter, repeatable: {example}")


def with_runs_dir(overrides: list[str], runs_dir: Optional[str]) -> list[str]:
    """The overrides of ``train``/``sweep`` with ``--runs-dir`` as the ``runs_dir=`` it stands for."""
    from peftlab.errors import UserError
    from peftlab.sweep.planning import key_of, quote

    if runs_dir is None:
        return overrides
    given = [o for o in overrides if key_of(o) == "runs_dir"]
    if given:
        raise UserError(f"--runs-dir {runs_dir} and '{given[0]}' both say where runs go: give only one of them")
    return [*overrides, f"runs_dir={quote(runs_dir)}"]


def fail(message: str) -> None:
    """Print a user error as one line and exit 2 (for checks made in the CLI itself)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def display_path(path: Any) -> str:
    """A folder as the user can type it back: relative to the current folder when inside it."""
    from pathlib import Path

    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
