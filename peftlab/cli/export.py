"""``peftlab export RUN OUT --format peft|merged``: a run's model for other tools."""

from __future__ import annotations

from typing import Optional

import typer

from peftlab.cli.app import app
from peftlab.cli.common import console, runs_dir_option
from peftlab.run_files import check_trained
from peftlab.stopping import sigterm_raises

FORMATS = ("peft", "merged")


@app.command("export")
def export_command(
    run: str = typer.Argument(..., help="run folder, name (latest version) or name/vN"),
    out: str = typer.Argument(..., help="output folder (new or empty; --force replaces it)"),
    fmt: str = typer.Option("peft", "--format", "-f", help="peft: a PEFT LoRA adapter folder; merged: a transformers checkpoint"),
    rank: Optional[int] = typer.Option(None, "--rank", help="peft: factor every layer's weight change to this rank "
                                       "(default: the exact adapter, or 2x the method's rank for SVD-family methods)"),
    force: bool = typer.Option(False, "--force", help="replace a non-empty output folder"),
    runs_dir: Optional[str] = runs_dir_option(),
) -> None:
    """Export a trained run as a Hugging Face PEFT adapter or as a merged transformers model."""
    import warnings
    from pathlib import Path

    from peftlab import runs
    from peftlab.staged_output import check_output

    _check_options(fmt, rank)
    warnings.filterwarnings("ignore")  # library deprecation notes do not concern the user (as in train)
    target = runs.resolve(run, runs.runs_root(runs_dir))
    out_path = Path(out).expanduser()
    # Fail before loading anything (and before importing torch).
    check_trained(target)
    check_output(out_path, force=force)
    with sigterm_raises():  # main() does this for every command; export's cleanup relies on it, so it says so
        _export(target, out_path, fmt, rank, force)
    say(f"written: {out_path}")


def _check_options(fmt: str, rank: Optional[int]) -> None:
    from peftlab.errors import UserError, did_you_mean

    if fmt not in FORMATS:
        raise UserError(f"--format {fmt} is not known{did_you_mean(fmt, FORMATS)}: use one of {', '.join(FORMATS)}")
    if rank is not None and rank < 1:
        raise UserError(f"--rank {rank} is not allowed: use an integer >= 1")
    if rank is not None and fmt != "peft":
        raise UserError("--rank applies to --format peft only")


def _export(target, out_path, fmt: str, rank: Optional[int], force: bool) -> None:
    """Load the run's model and write it (into a staging folder that is removed if anything stops it)."""
    from peftlab.experiment import load_trained
    from peftlab.export import write_merged, write_peft

    exp = load_trained(target.path)
    if fmt == "merged":
        report = write_merged(exp, target.path, out_path, force=force)
        say(f"merged model: {report['layers_merged']} adapted layers folded into their weights")
        return
    report = write_peft(exp, target.path, out_path, rank=rank, force=force)
    how = {"native-lora": "LoRA factors as trained", "native-dora": "DoRA factors and magnitudes as trained",
           "factorized": "SVD factors of each layer's weight change"}.get(
        report["path"], f"{report['path'].removeprefix('native-')} parameters as trained")
    say(f"PEFT adapter ({how}): r={report['rank']}, {len(report['layers'])} layers; relative error "
        f"max {report['max_relative_error']:.2e}, mean {report['mean_relative_error']:.2e}"
        + ("" if report["exact"] else " (truncated: raise --rank for a closer export)"))
    if exp.cfg.model.get("random_init", False):
        say("note: this run's base model is randomly initialised (model.random_init=true); "
            "the adapter only fits that same random model")


def say(text: str) -> None:
    console.print(text, markup=False, highlight=False, soft_wrap=True)
