"""``peftlab analyze RUN``: spectral diagnostics of a run's weight updates, stored in the run folder."""

from __future__ import annotations

from typing import Optional

import typer

from peftlab.cli.app import app
from peftlab.cli.common import console, runs_dir_option
from peftlab.run_files import check_trained


@app.command("analyze")
def analyze_command(
    run: str = typer.Argument(..., help="run folder, name (latest version) or name/vN"),
    top_k: int = typer.Option(10, "--top-k", help="singular vectors of the fine-tuned weight checked for intruders"),
    epsilon: float = typer.Option(0.5, "--epsilon", help="a vector is an intruder when its best cosine is below this"),
    runs_dir: Optional[str] = runs_dir_option(),
    layers: int = typer.Option(12, "--layers", help="how many layers to list (most intruders first)"),
) -> None:
    """Intruder dimensions, effective rank (RankMe), norms and subspace overlap of the update."""
    from rich.table import Table

    from peftlab import runs
    from peftlab.errors import UserError

    if top_k < 1 or not 0 < epsilon < 1:
        raise UserError(f"--top-k={top_k} --epsilon={epsilon}: use --top-k >= 1 and 0 < --epsilon < 1")
    target = runs.resolve(run, runs.runs_root(runs_dir))
    check_trained(target)  # before torch: a damaged folder is one line, not a library's traceback
    from peftlab.analysis.run import analyze_experiment
    from peftlab.experiment import load_trained

    result = analyze_experiment(load_trained(target.path), top_k=top_k, epsilon=epsilon)
    runs.atomic_write_json(target.analysis_path, result)
    model = result["model"]
    table = Table(title=f"{target.label}: spectral diagnostics per layer", title_justify="left")
    chosen = any("rank" in row for row in result["layers"].values())  # the method chose each layer's rank
    for col in ("layer", "intruders", *(("rank",) if chosen else ()), "rankme", "spectral", "frobenius", "overlap"):
        table.add_column(col, justify="left" if col == "layer" else "right")
    ranked = sorted(result["layers"].items(), key=lambda kv: -kv[1]["intruders"])
    for name, row in ranked[:layers]:
        rank = (str(row.get("rank", "-")),) if chosen else ()
        table.add_row(name, str(row["intruders"]), *rank, f"{row['rankme']:.2f}", f"{row['spectral_norm']:.4f}",
                      f"{row['frobenius_norm']:.4f}", f"{row['subspace_overlap']:.3f}")
    console.print(table)
    console.print(
        f"model: {model['intruders']} intruder dimensions over {model['layers']} layers "
        f"(top-{top_k}, epsilon {epsilon}); mean RankMe {model['rankme_mean']:.2f}; "
        f"mean overlap {model['subspace_overlap_mean']:.3f}"
    )
    console.print(f"written: {target.analysis_path}")
