"""``peftlab show RUN``: one run in detail: status, provenance, config diff, results (no torch)."""

from __future__ import annotations

import shlex
from typing import Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from peftlab import runs as store
from peftlab.cli.app import app
from peftlab.cli.common import console, runs_dir_option
from peftlab.cli.runs import fmt, method_name, status_text
from peftlab.errors import UserError
from peftlab.run_files import ADAPTER_WEIGHTS, run_problem

LAST_METRICS = 5
# Leaves that describe a component rather than configure it; not worth a diff row.
DESCRIPTIVE = ("description", "paper")


def _kv(table: Table, key: str, value: Any) -> None:
    if value is None or value == "" or value == {}:
        return
    table.add_row(key, value if isinstance(value, str) else escape(fmt(value)))


def _grid() -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    return grid


def _section(title: str) -> None:
    console.print()
    console.print(f"[bold underline]{title}[/bold underline]")


def _metrics_line(values: Any) -> str:
    if not isinstance(values, dict):
        return fmt(values)
    return "  ".join(f"{k}={fmt(v)}" for k, v in values.items())


def _duration(seconds: Any) -> str | None:
    try:
        seconds = float(seconds)
    except (TypeError, ValueError):
        return None
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _show_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return "null"
    return fmt(value) if isinstance(value, float) else repr(value) if isinstance(value, (list, dict)) else str(value)


def _config_diff(run: store.Run) -> None:
    _section("config (differences from the embedded defaults)")
    if not run.config_path.is_file():
        console.print("[dim](no config.yaml in this run)[/dim]")
        return
    from omegaconf import OmegaConf

    from peftlab.config import default_config, diff
    from peftlab.errors import UserError

    try:
        other = OmegaConf.load(run.config_path)
    except Exception as exc:  # noqa: BLE001 - a damaged file is reported, not raised
        console.print(f"[red]cannot read {escape(str(run.config_path))}: {escape(str(exc).splitlines()[0])}[/red]")
        return
    try:
        base = default_config()
    except UserError as exc:
        console.print(f"[dim](cannot compose the defaults to compare with: {escape(str(exc))})[/dim]")
        return
    rows = [(k, a, b) for k, a, b in diff(base, other) if k.rpartition(".")[2] not in DESCRIPTIVE]
    if not rows:
        console.print("[dim](same as the defaults)[/dim]")
        return
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("key", style="cyan", no_wrap=True)
    table.add_column("default", style="dim", overflow="fold")
    table.add_column("this run", style="bold", overflow="fold")
    for key, a, b in rows:
        table.add_row(escape(key), escape(_show_value(a)), escape(_show_value(b)))
    console.print(table)


def _adapter_note(run: store.Run) -> str:
    """Why the adapter folder cannot be used, when a glance tells: never written, or its weights removed."""
    if not run.adapter_dir.is_dir():
        return " [dim](not written)[/dim]"
    if not (run.adapter_dir / ADAPTER_WEIGHTS[0]).is_file():
        return " [dim](no weights here: eval and export cannot load it)[/dim]"
    return ""


def _summary(run: store.Run) -> None:
    summary = run.summary
    _section("summary")
    if not summary:
        note = "the run is still going" if run.status == "running" else "no summary.json"
        console.print(f"[dim]({note})[/dim]")
        return
    grid = _grid()
    done = set()

    def take(*keys: str) -> Any:
        for k in keys:
            done.add(k)
        for k in keys:
            if summary.get(k) is not None:
                return summary[k]
        return None

    test = take("test")
    if test is not None:
        _kv(grid, "test", escape(_metrics_line(test)))
    best = take("best_validation", "best")
    if best is not None:
        if isinstance(best, dict) and "step" in best:
            rest = {k: v for k, v in best.items() if k != "step"}
            _kv(grid, "best validation", escape(f"{_metrics_line(rest)}  (step {fmt(best['step'])})"))
        else:
            _kv(grid, "best validation", escape(_metrics_line(best)))
    val = take("final_validation", "validation")
    if val is not None:
        _kv(grid, "last validation", escape(_metrics_line(val)))
    trainable, total = take("trainable_params"), take("total_params")
    if trainable is not None:
        share = ""
        if isinstance(trainable, (int, float)) and isinstance(total, (int, float)) and total:
            share = f" of {fmt(int(total))} ({100 * trainable / total:.3g}%)"
        _kv(grid, "trainable params", f"{fmt(int(trainable))}{share}")
    elif total is not None:
        _kv(grid, "total params", fmt(int(total)))
    _kv(grid, "steps", take("steps"))
    wall = take("wall_time_s", "wall_time")
    if wall is not None:
        _kv(grid, "wall time", _duration(wall) or fmt(wall))
    tps = take("tokens_per_s")
    if tps is not None:
        _kv(grid, "tokens/s", fmt(float(tps)) if isinstance(tps, (int, float)) else tps)
    mem_mb, mem_b = take("peak_memory_mb"), take("peak_memory_bytes")
    device = take("device")
    on = f" [dim](on {escape(str(device))})[/dim]" if device else ""
    if isinstance(mem_mb, (int, float)) and mem_mb > 0:
        _kv(grid, "peak memory", f"{fmt(float(mem_mb))} MB{on}")
    elif isinstance(mem_b, (int, float)) and mem_b > 0:
        _kv(grid, "peak memory", f"{fmt(mem_b / 2**20)} MB{on}")
    elif mem_mb is not None or mem_b is not None:
        _kv(grid, "peak memory", f"[dim]not measured{on}[/dim]")
    metric = take("metric")
    if metric:
        _kv(grid, "key metric", escape(str(metric)))
    for key, value in summary.items():  # whatever else the run recorded
        if key not in done and value is not None:
            _kv(grid, key, escape(_metrics_line(value)))
    console.print(grid)


def _regularizers(run: store.Run) -> None:
    """Each regularizer's weight and its last logged raw and weighted values."""
    from peftlab.metrics import regularizer_terms

    records = run.metrics()
    terms = regularizer_terms(records)
    if not terms:
        return
    _section("regularizer terms (last training line)")
    last = next(r for r in reversed(records) if r.get("split") == "train")
    weights = run.config.get("regularizer") or {}
    grid = _grid()
    for key, raw in terms.items():
        node = weights.get(key[len("reg/"):]) if isinstance(weights, dict) else None
        weight = node.get("weight") if isinstance(node, dict) else None
        parts = [f"raw {fmt(raw)}"]
        if weight is not None:
            parts.append(f"weight {fmt(weight)}")
        if isinstance(last.get(f"{key}/weighted"), (int, float)):
            parts.append(f"weighted {fmt(last[f'{key}/weighted'])}")
        _kv(grid, key, escape(", ".join(parts)))
    console.print(grid)
def _ranks(run: store.Run) -> None:
    """The rank each matrix ended with (ranks.json), one row per module type, one column per layer."""
    ranks = run.ranks
    if not ranks:
        return
    from peftlab.rank_grid import rank_grid

    layers, kinds, cells = rank_grid(ranks)
    _section(f"final ranks ({sum(ranks.values())} over {len(ranks)} matrices; rows: module type, columns: layer)")
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("module", style="cyan", no_wrap=True)
    for layer in layers:
        table.add_column(layer, justify="right")
    for kind in kinds:
        table.add_row(escape(kind), *(str(cells[(kind, layer)]) if (kind, layer) in cells else "" for layer in layers))
    console.print(table)


def _per_class(run: store.Run) -> None:
    """Per-class precision / recall / F1 and the confusion matrix of the reported test (a classifier's)."""
    details = (run.summary or {}).get("test_details")
    if not isinstance(details, dict) or not details.get("per_class") or not details.get("confusion"):
        return
    labels, confusion = list(details["labels"]), details["confusion"]
    _section("test per class (rows of the confusion matrix: true class; columns: predicted)")
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("class", overflow="fold")
    for header in ("precision", "recall", "f1", "support"):
        table.add_column(header, justify="right", no_wrap=True, min_width=len(header))
    width = max(len(str(v)) for row in confusion for v in row)
    for i in range(len(labels)):  # counts are never cut: the class names wrap first
        table.add_column(str(i), justify="right", no_wrap=True, min_width=max(width, len(str(i))))
    for i, label in enumerate(labels):
        c = details["per_class"].get(label, {})
        table.add_row(escape(f"{i} {label}"), *(fmt(c.get(k)) for k in ("precision", "recall", "f1")),
                      str(c.get("support", "")), *(str(v) for v in confusion[i]))
    console.print(table)


def _last_metrics(run: store.Run) -> None:
    records = run.metrics()
    _section(f"last metrics ({min(len(records), LAST_METRICS)} of {len(records)} lines)")
    if not records:
        console.print("[dim](no metrics.jsonl lines yet)[/dim]")
        return
    for record in records[-LAST_METRICS:]:
        console.print(escape(_metrics_line(record)), highlight=False)


@app.command("show")
def show_command(
    run_spec: str = typer.Argument(..., metavar="RUN", help="run folder, run name (latest version) or name/vN"),
    runs_dir: Optional[str] = runs_dir_option(),
) -> None:
    """Show one run: status, paths, provenance, config changes, results and the last metrics."""
    run = store.resolve(run_spec, store.runs_root(runs_dir))
    problem = run_problem(run)  # a damaged meta.json or summary.json would otherwise show as "unknown" / "no summary"
    if problem is not None:
        raise UserError(problem)
    meta = run.meta

    console.print(f"[bold cyan]{escape(run.label)}[/bold cyan]  {status_text(run)}  [dim]{escape(method_name(run))}[/dim]")
    grid = _grid()
    _kv(grid, "folder", escape(str(run.path)))
    adapter = run.adapter_dir
    _kv(grid, "adapter", escape(str(adapter)) + _adapter_note(run))
    ckpts = run.checkpoints_dir
    if ckpts.is_dir():
        n = sum(1 for p in ckpts.iterdir() if p.is_dir())
        _kv(grid, "checkpoints", f"{escape(str(ckpts))} [dim]({n} kept)[/dim]")
    else:
        _kv(grid, "checkpoints", f"{escape(str(ckpts))} [dim](none)[/dim]")
    started, ended = meta.get("started_at"), meta.get("ended_at")
    if started:
        _kv(grid, "started", f"{escape(str(started))} [dim]({store.age(started)} ago)[/dim]")
    if ended:
        a, b = store.parse_iso(started), store.parse_iso(ended)
        took = f" [dim](took {_duration((b - a).total_seconds())})[/dim]" if a and b else ""
        _kv(grid, "ended", f"{escape(str(ended))}{took}")
    git = meta.get("git") or {}
    if git.get("commit"):
        dirty = {True: " [yellow](dirty: uncommitted changes)[/yellow]", False: " (clean)"}.get(git.get("dirty"), "")
        _kv(grid, "git commit", f"{escape(str(git['commit']))}{dirty}")
    elif git:
        _kv(grid, "git commit", "[dim](not in a git repository)[/dim]")
    sweep = run.sweep
    if sweep is not None:
        _kv(grid, "sweep", escape(f"{sweep.get('name')}/{sweep.get('version')}, member #{sweep.get('member')} "
                                  f"({sweep.get('path')})"))
    _kv(grid, "seed", meta.get("seed"))
    _kv(grid, "device", escape(str(meta["device"])) if meta.get("device") else None)
    calibration = meta.get("calibration")
    if isinstance(calibration, dict):
        how = "computed" if calibration.get("computed") else "read from the cache"
        _kv(grid, "calibration", escape(
            f"{calibration.get('statistic')} of {calibration.get('layers')} layers, {calibration.get('examples')} "
            f"examples, {how} in {fmt(calibration.get('seconds'))}s, <= "
            f"{fmt((calibration.get('memory_bytes') or 0) / 2**20)} MiB of statistics at once"))
    env = meta.get("environment") or {}
    host = env.get("hostname")
    pid = meta.get("pid")
    if host or pid:
        _kv(grid, "host", escape(f"{host or '?'}" + (f" (pid {pid})" if pid else "")))
    packages = env.get("packages") or {}
    if env.get("python") or packages:
        versions = [f"python {env['python']}"] if env.get("python") else []
        versions += [f"{k} {v}" for k, v in packages.items() if k in ("peftlab", "torch", "transformers", "peft")]
        _kv(grid, "versions", escape(", ".join(versions)))
    argv = meta.get("argv")
    if argv:
        _kv(grid, "command", escape(shlex.join(str(a) for a in argv)) if isinstance(argv, list) else escape(str(argv)))
    if meta.get("error"):
        _kv(grid, "error", f"[red]{escape(str(meta['error']))}[/red]")
    console.print(grid)

    _section("overrides")
    overrides = run.overrides()
    if overrides:
        console.print(escape(" ".join(overrides)), highlight=False)
    else:
        console.print("[dim](none: the embedded defaults)[/dim]")

    _config_diff(run)
    _summary(run)
    _regularizers(run)
    _ranks(run)
    _per_class(run)
    _last_metrics(run)
