"""``peftlab export RUN OUT --format peft|merged``: a run's model for other tools."""

from __future__ import annotations

from typing import Optional

import typer

from peftlab.cli.app import app
from peftlab.cli.common import console

FORMATS = ("peft", "merged")


@app.command("export")
def export_command(
    run: str = typer.Argument(..., help="run folder, name (latest version) or name/vN"),
    out: str = typer.Argument(..., help="output folder (new or empty; --force replaces it)"),
    fmt: str = typer.Option("peft", "--format", "-f", help="peft: a PEFT LoRA adapter folder; merged: a transformers checkpoint"),
    rank: Optional[int] = typer.Option(None, "--rank", help="peft: factor every layer's weight change to this rank "
                                       "(default: the exact adapter, or 2x the method's rank for SVD-family methods)"),
    force: bool = typer.Option(False, "--force", help="replace a non-empty output folder"),
    runs_dir: Optional[str] = typer.Option(None, "--runs-dir", help="where runs live (default: runs/ or PEFTLAB_RUNS_DIR)"),
) -> None:
    """Export a trained run as a Hugging Face PEFT adapter or as a merged transformers model."""
    import warnings
    from pathlib import Path

    from peftlab import runs
    from peftlab.errors import UserError, did_you_mean

    if fmt not in FORMATS:
        raise UserError(f"--format {fmt} is not known{did_you_mean(fmt, FORMATS)}: use one of {', '.join(FORMATS)}")
    if rank is not None and rank < 1:
        raise UserError(f"--rank {rank} is not allowed: use an integer >= 1")
    if rank is not None and fmt != "peft":
        raise UserError("--rank applies to --format peft only")
    warnings.filterwarnings("ignore")  # library deprecation notes do not concern the user (as in train)
    target = runs.resolve(run, runs.runs_root(runs_dir))
    out_path = Path(out).expanduser()
    from peftlab.export import check_output

    # Fail before loading anything (and before importing torch).
    if not (target.adapter_dir / "adapter_config.json").is_file():
        raise UserError(f"run '{target.label}' has no adapter (status: {target.status}; it did not finish): "
                        f"resume it with `peftlab train resume={target.label}` or pick another run")
    check_output(out_path, force=force, run_path=target.path)
    from peftlab.experiment import load_trained
    from peftlab.export import write_merged, write_peft

    exp = load_trained(target.path)
    if fmt == "peft":
        report = write_peft(exp, target.path, out_path, rank=rank, force=force)
        how = {"native-lora": "LoRA factors as trained", "native-dora": "DoRA factors and magnitudes as trained",
               "factorized": "SVD factors of each layer's weight change"}[report["path"]]
        say(f"PEFT adapter ({how}): r={report['rank']}, {len(report['layers'])} layers; relative error "
            f"max {report['max_relative_error']:.2e}, mean {report['mean_relative_error']:.2e}"
            + ("" if report["exact"] else " (truncated: raise --rank for a closer export)"))
        if exp.cfg.model.get("random_init", False):
            say("note: this run's base model is randomly initialised (model.random_init=true); "
                "the adapter only fits that same random model")
    else:
        report = write_merged(exp, target.path, out_path, force=force)
        say(f"merged model: {report['layers_merged']} adapted layers folded into their weights")
    say(f"written: {out_path}")


def say(text: str) -> None:
    console.print(text, markup=False, highlight=False, soft_wrap=True)
