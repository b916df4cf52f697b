"""``peftlab ls methods|models|datasets|regularizers|optimizers|trainers``: the options, read from configs."""

from __future__ import annotations

from typing import List, Optional

import typer
from rich.table import Table

from peftlab.cli.app import app
from peftlab.cli.common import console

KINDS = {
    "methods": "method",
    "models": "model",
    "datasets": "dataset",
    "regularizers": "regularizer",
    "optimizers": "optimizer",
    "trainers": "trainer",
}


@app.command("ls")
def ls_command(
    kind: str = typer.Argument(..., help="methods | models | datasets | regularizers | optimizers | trainers"),
    config_dir: Optional[List[str]] = typer.Option(None, "--config-dir", help="extra config folder(s) to search"),
) -> None:
    """List the options of a config group, each with a one-line description."""
    from peftlab.config import describe_options, search_path
    from peftlab.errors import UserError, did_you_mean

    group = KINDS.get(kind) or (kind if kind in KINDS.values() else None)
    if group is None:
        raise UserError(f"cannot list '{kind}'{did_you_mean(kind, KINDS)}: choose one of {', '.join(KINDS)}")
    rows = describe_options(group, search_path(config_dir or []))
    show_paper = any(r["paper"] for r in rows)
    table = Table(title=f"{group} options (select with {group}=<name>)", title_justify="left")
    table.add_column("name", style="bold cyan", no_wrap=True)
    table.add_column("description")
    if show_paper:
        table.add_column("paper", style="dim")
    for r in rows:
        table.add_row(r["name"], r["description"], *([r["paper"]] if show_paper else []))
    console.print(table)
