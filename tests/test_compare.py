"""``peftlab compare`` on fabricated run folders (no training, no torch)."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from peftlab import compare as cmp
from peftlab.errors import UserError
from tests.fabricated_runs import fabricate_run, grouped_rows, member_stamp, run_cli

pytestmark = pytest.mark.usefixtures("hermetic")


def test_group_pools_seeds_and_marks_best(runs):
    rows, left_out = grouped_rows(runs)
    assert len(rows) == 4
    assert [r.status for r in left_out] == ["running"]
    assert cmp.left_out_note(left_out).startswith("1 run not completed (1 running)")
    assert all(list(r.params) == ["method", "method.rank"] for r in rows)
    # default order: the grid, numbers numerically
    assert [tuple(r.params.values()) for r in rows] == [("lora", "4"), ("lora", "8"), ("pissa", "4"), ("pissa", "8")]
    by = {tuple(r.params.values()): r for r in rows}
    for r in rows:
        assert r.n == 2 and r.metric == "accuracy" and r.higher_is_better
    best = by[("pissa", "8")]
    assert best.best and best.mark == cmp.BEST_MARK
    assert best.test_mean == pytest.approx(0.88)
    assert best.test_std == pytest.approx(0.0141421, rel=1e-4)
    assert best.val_mean == pytest.approx(0.89)
    assert by[("lora", "8")].within_noise and by[("lora", "8")].mark == cmp.NOISE_MARK
    assert not by[("pissa", "4")].within_noise and not by[("lora", "4")].within_noise
    assert sum(r.best for r in rows) == 1
    assert best.trainable_params == 74_000 and best.intruders == pytest.approx(1.5)
    assert sorted(s for s in best.seeds) == [0, 1]


def test_sweep_folder_glob_and_dedup(runs):
    sweep = runs / "sweeps" / "grid" / "v1"
    notes: list[str] = []
    recs = cmp.collect([str(sweep)], notes=notes)
    assert len(recs) == 8  # the runs whose meta.json names the sweep
    assert any("no run folder yet" in n for n in notes)
    both = cmp.collect([str(runs), str(sweep), str(runs / "lora-*" / "*"), str(recs[0].path)])
    assert len(both) == 9  # 8 completed + 1 running, each once
    assert len(cmp.collect([str(runs / "pissa-minilm-stdlib_docs")])) == 4


def test_missing_paths_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="nope"):
        cmp.collect([str(tmp_path / "nope")])
    with pytest.raises(UserError, match=r"\*"):
        cmp.collect([str(tmp_path / "nope*")])
    assert cmp.collect([str(tmp_path)]) == []


def test_where_filters_and_sort(runs):
    recs = cmp.collect([str(runs)])
    kept, _ = cmp.select(recs, where=["method=lora"])
    assert {r.choices["method"] for r in kept} == {"lora"} and len(kept) == 4
    kept, _ = cmp.select(recs, where=["method.rank>=8"])
    rows = cmp.group(kept)
    assert len(rows) == 2 and list(rows[0].params) == ["method"]
    kept, _ = cmp.select(recs, where=["method=lora,pissa", "method.rank<8", "seed!=1"])
    assert len(kept) == 2
    kept, left = cmp.select(recs, where=["method.rank=8"], include_all=True)
    assert len(kept) == 5 and left == []
    with pytest.raises(UserError, match="did you mean 'method.rank'"):
        cmp.select(recs, where=["method.rnak=8"])
    with pytest.raises(UserError, match="cannot read"):
        cmp.select(recs, where=["method"])
    rows = cmp.group(cmp.select(recs)[0], sort="metric")
    assert rows[0].best and [r.val_mean for r in rows] == sorted((r.val_mean for r in rows), reverse=True)
    rows = cmp.group(cmp.select(recs)[0], sort="-method.rank")
    assert rows[0].params["method.rank"] == "8"
    with pytest.raises(UserError, match="cannot sort by"):
        cmp.group(recs, sort="colour")


def test_lower_is_better_metric_and_unknown_metric(runs):
    rows, _ = grouped_rows(runs, metric="loss")
    best = next(r for r in rows if r.best)
    assert not best.higher_is_better and best.params == {"method": "pissa", "method.rank": "8"}
    assert best.test_mean == pytest.approx(0.12)
    with pytest.raises(UserError, match="did you mean 'accuracy'"):
        grouped_rows(runs, metric="acuracy")


def test_text_formats(runs):
    rows, _ = grouped_rows(runs)
    md = cmp.to_markdown(rows)
    assert md.startswith("| method | method.rank | val accuracy | test accuracy | n |")
    assert "| pissa | 8 | 0.8900 ± 0.0141 | 0.8800 ± 0.0141 | 2 |" in md
    assert cmp.BEST_MARK in md and cmp.NOISE_MARK in md
    assert "Ranked and marked by validation accuracy" in md
    table = list(csv.DictReader(io.StringIO(cmp.to_csv(rows))))
    assert len(table) == 4
    row = next(t for t in table if t["method"] == "pissa" and t["method.rank"] == "8")
    assert float(row["test_mean"]) == pytest.approx(0.88) and row["n"] == "2" and row["best"] == "True"
    data = json.loads(cmp.to_json(rows))
    assert data["metric"] == "accuracy" and data["swept"] == ["method", "method.rank"]
    assert len(data["rows"]) == 4 and all(len(r["runs"]) == 2 for r in data["rows"])
    from rich.console import Console

    console = Console(width=220, record=True, file=io.StringIO())
    console.print(cmp.render_table(rows))
    text = console.export_text()
    assert "0.8800 ± 0.0141" in text and "★ best" in text and "method.rank" in text


def test_plot_and_html(runs, tmp_path):
    rows, _ = grouped_rows(runs)
    figs = cmp.plot(rows, tmp_path / "figs")
    names = {f.name for f in figs}
    assert {"loss_curves.png", "val_accuracy.png", "accuracy_vs_rank.png", "accuracy_vs_params.png"} <= names
    assert all(f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in figs)
    recs = [r for row in rows for r in row.records]
    out = cmp.html_report(rows, recs, figs, tmp_path / "report" / "r.html")
    page = out.read_text()
    assert page.count('<img src="data:image/png;base64,') == len(figs)
    assert "<table>" in page and "0.8800 ± 0.0141" in page and "<details>" in page
    assert "_target_: peftlab.methods.pissa.PISSA" in page
    assert "src=\"http" not in page and "href=" not in page  # nothing external


def test_no_torch_import(runs):
    code = (
        "import sys, io\n"
        "import peftlab.compare as c, peftlab.cli.compare\n"
        "from rich.console import Console\n"
        f"rows = c.group(c.select(c.collect([{str(runs)!r}]))[0])\n"
        "Console(file=io.StringIO()).print(c.render_table(rows)); c.to_json(rows); c.to_markdown(rows)\n"
        "assert len(rows) == 4\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_cli_table_plot_html(runs, tmp_path):
    res = run_cli("compare", str(runs), "--plot", str(tmp_path / "figs"), "--html", str(tmp_path / "r.html"))
    assert res.returncode == 0, res.stderr
    assert "method.rank" in res.stdout and "0.8800 ± 0.0141" in res.stdout and "★ best" in res.stdout
    assert "1 run not completed" in res.stdout
    assert (tmp_path / "figs" / "loss_curves.png").is_file()
    assert '<img src="data:image/png;base64,' in (tmp_path / "r.html").read_text()
    res = run_cli("compare", str(runs / "sweeps" / "grid" / "v1"), "--format", "csv", "--where", "method=pissa", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert len(list(csv.DictReader(io.StringIO(res.stdout)))) == 2


def test_cli_errors(tmp_path):
    res = run_cli("compare", "/nonexistent")
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "/nonexistent" in res.stderr
    res = run_cli("compare", str(tmp_path))
    assert res.returncode == 2 and "no runs found" in res.stderr and str(tmp_path) in res.stderr
    res = run_cli("compare", str(tmp_path), "--format", "xml")
    assert res.returncode == 2 and "--format" in res.stderr


# ------------------------------------------------------------ sweep members ---
def _sweep(root: Path, members: int = 1) -> Path:
    sweep = root / "sweeps" / "s" / "v1"
    sweep.mkdir(parents=True)
    (sweep / "sweep.json").write_text(json.dumps({"name": "s", "version": "v1", "members": [
        {"index": i, "overrides": ["method=lora"]} for i in range(members)]}))
    return sweep


def test_sweep_member_is_read_under_the_sweeps_runs_root_not_the_cwd(tmp_path, monkeypatch):
    root = tmp_path / "store" / "runs"
    ours = fabricate_run(root, "lora", 8, 0, 0.7, version=1, sweep=member_stamp(0, "sweeps/s/v1"))
    sweep = _sweep(root)
    cwd = tmp_path / "elsewhere"
    # a decoy stamped with the same relative sweep path, under the current directory's runs/
    decoy = fabricate_run(cwd / "runs", "lora", 8, 0, 0.1, version=1, sweep=member_stamp(0, "sweeps/s/v1"))
    monkeypatch.chdir(cwd)
    notes: list[str] = []
    recs = cmp.collect([str(sweep)], notes=notes)
    assert [r.path.resolve() for r in recs] == [ours.resolve()] and decoy.resolve() != ours.resolve()
    assert recs[0].summary["test"]["accuracy"] == pytest.approx(0.7)
    assert notes == []


def test_sweep_member_missing_under_its_root_is_not_found_elsewhere(tmp_path, monkeypatch):
    root = tmp_path / "store" / "runs"
    sweep = _sweep(root)
    fabricate_run(tmp_path / "elsewhere" / "runs", "lora", 8, 0, 0.1, version=1, sweep=member_stamp(0, "sweeps/s/v1"))
    monkeypatch.chdir(tmp_path / "elsewhere")
    notes: list[str] = []
    assert cmp.collect([str(sweep)], notes=notes) == []
    assert notes == [f"1 member(s) of sweep {sweep} have no run folder yet"]


def test_a_member_is_its_newest_run_and_an_absolute_stamp_is_found(tmp_path):
    root = tmp_path / "runs"
    sweep = _sweep(root, members=2)
    fabricate_run(root, "lora", 8, 0, 0.1, version=1, status="failed", sweep=member_stamp(0, "sweeps/s/v1"))
    retried = fabricate_run(root, "lora", 8, 0, 0.7, version=2, sweep=member_stamp(0, "sweeps/s/v1"))
    meta = json.loads((retried / "meta.json").read_text())
    (retried / "meta.json").write_text(json.dumps({**meta, "started_at": "2024-01-02T00:00:00"}))
    absolute = fabricate_run(root, "pissa", 8, 0, 0.6, version=1, sweep=member_stamp(1, str(sweep.resolve())))
    recs = cmp.collect([str(sweep)], notes=[])
    assert sorted(r.path for r in recs) == sorted([retried, absolute])


def test_collecting_a_sweep_imports_no_torch(runs):
    code = (
        "import sys\n"
        "import peftlab.compare as c\n"
        f"recs = c.collect([{str(runs / 'sweeps' / 'grid' / 'v1')!r}])\n"
        "assert len(recs) == 8, recs\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_rank_figure_draws_the_mean_final_rank_per_layer_and_module_type(runs, tmp_path):
    from peftlab.compare.rank_figure import rank_panels
    from peftlab.rank_grid import rank_grid

    rows, _ = grouped_rows(runs)
    assert "ranks.png" not in {f.name for f in cmp.plot(rows, tmp_path / "none")}  # no run recorded ranks
    for i, folder in enumerate(sorted((runs / "pissa-minilm-stdlib_docs").glob("v*"))):
        ranks = {f"bert.encoder.layer.{layer}.attention.self.{kind}": 4 + layer + i
                 for layer in range(2) for kind in ("query", "value")}
        (folder / "ranks.json").write_text(json.dumps({"ranks": ranks}))
    rows, _ = grouped_rows(runs)
    panels = dict(rank_panels(rows))
    assert len(panels) == 2  # the two pissa configurations (rank 4 and 8), each over its two seeds
    means = next(iter(panels.values()))
    assert means["bert.encoder.layer.1.attention.self.value"] == 5.5  # (5 + 6) / 2
    layers, kinds, cells = rank_grid(means)
    assert layers == ["0", "1"] and kinds == ["attention.self.query", "attention.self.value"]
    assert cells[("attention.self.query", "0")] == 4.5
    figs = cmp.plot(rows, tmp_path / "figs")
    assert (tmp_path / "figs" / "ranks.png") in figs


def test_rank_grid_reads_layer_and_module_type_from_any_architecture():
    from peftlab.rank_grid import NO_LAYER, layer_and_kind

    assert layer_and_kind("model.layers.11.self_attn.q_proj") == ("11", "self_attn.q_proj")
    assert layer_and_kind("bert.encoder.layer.3.output.dense") == ("3", "output.dense")
    assert layer_and_kind("classifier") == (NO_LAYER, "classifier")


# ------------------------------------------------------- learning rates, ties, one-point series ---
def _set_lr(run: Path, lr: float) -> None:
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["optimizer"]["lr"] = lr
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))


def test_each_configuration_shows_the_learning_rate_it_trained_at(tmp_path):
    root = tmp_path / "runs"
    _set_lr(fabricate_run(root, "lora", 8, 0, 0.80, version=1), 2e-3)
    _set_lr(fabricate_run(root, "pissa", 8, 0, 0.82, version=1), 5e-4)
    _set_lr(fabricate_run(root, "pissa", 8, 1, 0.83, version=2), 1e-4)  # one configuration, two rates
    rows, _ = grouped_rows(root)
    text = cmp.to_markdown(rows)
    header = text.splitlines()[0]
    assert "| lr |" in header
    by_label = {r.label: r for r in rows}
    assert by_label["method=lora"].learning_rates == [2e-3]
    assert by_label["method=pissa"].learning_rates == [1e-4, 5e-4]
    assert "2e-03" in text and "1e-04..5e-04" in text
    assert json.loads(cmp.to_json(rows))["rows"][0]["learning_rates"]


def test_a_swept_learning_rate_is_not_shown_twice(tmp_path):
    root = tmp_path / "runs"
    for v, lr in enumerate((1e-4, 1e-3)):
        run = fabricate_run(root, "lora", 8, 0, 0.8 + v / 100, version=v)
        _set_lr(run, lr)
        (run / "overrides.txt").write_text(f"method=lora\noptimizer.lr={lr}\nseed=0\n")
    rows, _ = grouped_rows(root)
    assert "optimizer.lr" in rows[0].params
    assert "| lr |" not in cmp.to_markdown(rows).splitlines()[0]


def test_when_every_configuration_ties_none_is_marked_best(tmp_path):
    root = tmp_path / "runs"
    fabricate_run(root, "lora", 8, 0, 0.80, version=1)
    fabricate_run(root, "pissa", 8, 0, 0.80, version=1)
    rows, _ = grouped_rows(root)
    assert not any(r.best or r.within_noise for r in rows)
    notes = cmp.row_notes(rows)
    assert any(n.startswith("every configuration ties on validation accuracy (0.81)") for n in notes)
    assert "★" not in cmp.to_markdown(rows)
    fabricate_run(root, "dora", 8, 0, 0.81, version=1)  # one differs: a best again, no tie note
    rows, _ = grouped_rows(root)
    assert sum(r.best for r in rows) == 1 and not any("ties" in n for n in cmp.row_notes(rows))


def test_a_series_with_one_point_is_drawn_with_a_marker(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    root = tmp_path / "runs"
    run = fabricate_run(root, "lora", 8, 0, 0.80, version=1)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    kept = [x for x in lines if x["split"] == "train"] + [next(x for x in lines if x["split"] == "validation")]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in kept) + "\n")
    saved = {}
    monkeypatch.setattr(Figure, "savefig", lambda fig, path, **kw: saved.__setitem__(Path(path).name, fig))
    rows, _ = grouped_rows(root)
    cmp.plot(rows, tmp_path / "figs")
    (val_line,) = saved["val_accuracy.png"].axes[0].get_lines()[:1]
    assert len(val_line.get_xdata()) == 1 and val_line.get_marker() == "o"
    (loss_line,) = saved["loss_curves.png"].axes[0].get_lines()
    assert len(loss_line.get_xdata()) == 5 and loss_line.get_marker() in (None, "None", "")


def test_rows_carry_a_confidence_interval_and_a_test_against_the_best(runs):
    from scipy import stats

    rows, _ = grouped_rows(runs)
    best = next(r for r in rows if r.best)
    assert best.p_vs_best is None and best.test_ci is not None
    other = next(r for r in rows if r.label == "method=lora method.rank=4")
    expected = stats.ttest_ind(other.test_values, best.test_values, equal_var=False).pvalue
    assert other.p_vs_best == pytest.approx(expected) and other.g_vs_best < 0
    # Holm over the three rows tested against the best, by hand: sorted p times 3, 2, 1, running maximum
    others = sorted((r for r in rows if not r.best), key=lambda r: r.p_vs_best)
    running = 0.0
    for factor, r in zip((3, 2, 1), others):
        running = max(running, min(1.0, factor * r.p_vs_best))
        assert r.p_holm_vs_best == pytest.approx(running)
    assert best.p_holm_vs_best is None
    text = cmp.to_markdown(rows)
    header = text.splitlines()[0]
    assert "| test 95% CI |" in header and "| p vs best |" in header and "| Holm p |" in header
    assert "Welch's t test" in text and "adjusted for the 3 tests in this table (Holm)" in text
    data = json.loads(cmp.to_json(rows))["rows"]
    for d, r in zip(data, rows):
        assert d["p_holm_vs_best"] == r.p_holm_vs_best
        expected = None if r.best else ("differs" if r.p_holm_vs_best < 0.05 else "not distinguishable")
        assert d["verdict_vs_best"] == expected


def test_the_verdict_reads_the_adjusted_p_not_the_raw_one(tmp_path):
    """Four rows tested against the best; pissa's raw p is about 0.02: alone it would differ, one of four it does not."""
    from scipy import stats

    root = tmp_path / "runs"
    version = iter(range(1, 100))
    accs = {"olora": [0.90, 0.91, 0.93], "pissa": [0.85, 0.87, 0.88], "dora": [0.89, 0.90, 0.92],
            "milora": [0.89, 0.91, 0.92], "lora": [0.90, 0.91, 0.92]}
    for method, values in accs.items():
        for seed, acc in enumerate(values):
            fabricate_run(root, method, 8, seed, acc, version=next(version))
    rows, _ = grouped_rows(root)
    by_method = {r.params["method"]: r for r in rows}
    assert by_method["olora"].best and sum(r.p_vs_best is not None for r in rows) == 4
    pissa = by_method["pissa"]
    raw = stats.ttest_ind(accs["pissa"], accs["olora"], equal_var=False).pvalue
    assert pissa.p_vs_best == pytest.approx(raw) and 0.0125 < raw < 0.05  # the smallest of four: times 4
    assert pissa.p_holm_vs_best == pytest.approx(4 * raw)
    verdicts = {d["method"]: d["verdict_vs_best"] for d in json.loads(cmp.to_json(rows))["rows"]}
    assert verdicts["pissa"] == "not distinguishable" and verdicts["olora"] is None
    line = next(x for x in cmp.to_markdown(rows).splitlines() if x.startswith("| pissa "))
    assert f"| {4 * raw:.2g} n.d. |" in line


@pytest.mark.parametrize("option, make, message", [
    ("--html", "folder", "is a folder: --html takes a file path"),
    ("--plot", "file", "is a file: --plot takes a folder for the figures"),
    ("--html", "under a file", "is a file, so nothing can be written under it"),
    ("--plot", "under a file", "is a file, so nothing can be written under it"),
])
def test_a_bad_place_for_the_report_or_figures_is_one_line_before_any_work(runs, tmp_path, option, make, message):
    target = tmp_path / "target"
    if make == "folder":
        target.mkdir()
    else:
        target.write_text("mine")
        if make == "under a file":
            target = target / "report.html"
    res = run_cli("compare", str(runs), option, str(target))
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "runs") == ["target"]  # nothing left beside it


def test_a_run_changed_mid_run_on_resume_is_named_under_the_table(tmp_path):
    """Grouped with the runs started at its final max_steps, a run extended on resume trained
    part of the way on another schedule: the notes say which run, what changed and where."""
    from peftlab.compare.notes import row_notes

    plain = fabricate_run(tmp_path, "lora", 8, 0, 0.8, version=1)
    extended = fabricate_run(tmp_path, "lora", 8, 1, 0.8, version=2)
    assert not any("changed on resume" in n for n in row_notes(grouped_rows(tmp_path)[0]))
    meta = json.loads((extended / "meta.json").read_text())
    meta["changed_on_resume"] = [{"step": 30, "trainer.max_steps": [30, 50]}]
    (extended / "meta.json").write_text(json.dumps(meta))
    notes = [n for n in row_notes(grouped_rows(tmp_path)[0]) if "changed on resume" in n]
    assert len(notes) == 1 and "trainer.max_steps 30 -> 50 at step 30" in notes[0]
    assert "lora-minilm-stdlib_docs/v2" in notes[0] and "/v1" not in notes[0] and plain.is_dir()
