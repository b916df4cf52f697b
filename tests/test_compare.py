"""``peftlab compare`` on fabricated run folders (no training, no torch)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from peftlab import compare as cmp
from peftlab.errors import UserError

# test accuracy per (method, rank) for seeds 0 and 1
GRID = {
    ("lora", 4): (0.80, 0.81),
    ("lora", 8): (0.855, 0.865),  # gap to best 0.02 <= 0.0141 + 0.0071: within noise
    ("pissa", 4): (0.84, 0.85),  # gap 0.035 > 0.0212: not within noise
    ("pissa", 8): (0.87, 0.89),  # best: 0.88 ± 0.014
}
TRAINABLE = {4: 37_000, 8: 74_000}
CLI = Path(sys.executable).parent / "peftlab"


def fabricate_run(runs: Path, method: str, rank: int, seed: int, acc: float, *, version: int,
                  status: str = "completed", analysis: bool = True) -> Path:
    d = runs / f"{method}-minilm-stdlib_docs" / f"v{version}"
    d.mkdir(parents=True)
    config = {
        "model": {"name_or_path": "sentence-transformers/all-MiniLM-L6-v2"},
        "dataset": {"name": "stdlib_docs"},
        "method": {"_target_": f"peftlab.methods.{method}.{method.upper()}", "rank": rank, "alpha": 16},
        "optimizer": {"lr": 0.0004},
        "trainer": {"max_steps": 50, "metric": "accuracy"},
        "seed": seed,
        "name": None,
    }
    (d / "config.yaml").write_text(yaml.safe_dump(config))
    (d / "overrides.txt").write_text(f"method={method}\nmethod.rank={rank}\nseed={seed}\n")
    (d / "meta.json").write_text(json.dumps({
        "status": status, "started_at": "2024-01-01T00:00:00", "ended_at": "2024-01-01T00:01:35",
        "seed": seed, "choices": {"method": method, "model": "minilm", "dataset": "stdlib_docs"},
    }))
    lines = []
    for step in range(10, 60, 10):
        lines.append({"step": step, "split": "train", "loss": 2.0 / step * (1 + 0.1 * seed) + 0.1 * rank / 8,
                      "lr": 0.0004, "tokens_per_s": 5000.0, "reg/l2_pretrained": 0.01})
        if step % 20 == 0 or step == 50:
            lines.append({"step": step, "split": "validation", "loss": 0.8, "accuracy": acc - 0.05 + step / 1000})
    (d / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    if status == "completed":
        (d / "summary.json").write_text(json.dumps({
            "test": {"accuracy": acc, "loss": 1.0 - acc},
            "best_validation": {"step": 50, "accuracy": acc + 0.01, "loss": 0.9 - acc},
            "final_validation": {"step": 50, "accuracy": acc + 0.01, "loss": 0.9 - acc},
            "trainable_params": TRAINABLE[rank], "total_params": 22_700_000,
            "wall_time_s": 95.1 + rank, "tokens_per_s": 5100.0, "peak_memory_mb": 900.0 + rank, "steps": 50,
        }))
    if analysis and status == "completed":
        (d / "analysis.json").write_text(json.dumps({
            "layers": {}, "model": {"intruders": 12 // rank + seed, "intruder_curve": {"0.5": 12 // rank + seed}},
        }))
    return d


@pytest.fixture()
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    members = []
    versions: dict[str, int] = {}
    for (method, rank), accs in GRID.items():
        for seed, acc in enumerate(accs):
            v = versions[method] = versions.get(method, -1) + 1
            d = fabricate_run(root, method, rank, seed, acc, version=v)
            members.append({"overrides": [f"method={method}", f"method.rank={rank}", f"seed={seed}"],
                            "run": str(d.relative_to(tmp_path)), "status": "completed"})
    members.append({"overrides": ["method=lora", "method.rank=16", "seed=0"], "run": None, "status": "pending"})
    # one unfinished run outside the sweep
    fabricate_run(root, "lora", 8, 2, 0.5, version=99, status="running")
    sweep = root / "sweeps" / "grid" / "0"
    sweep.mkdir(parents=True)
    (sweep / "sweep.json").write_text(json.dumps({
        "name": "grid", "version": 0, "grid": ["method=lora,pissa", "method.rank=4,8", "seed=0,1"],
        "members": members,
    }))
    return root


def _rows(root: Path, **kw):
    kept, left_out = cmp.select(cmp.collect([str(root)]))
    return cmp.group(kept, **kw), left_out


def test_group_pools_seeds_and_marks_best(runs):
    rows, left_out = _rows(runs)
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
    sweep = runs / "sweeps" / "grid" / "0"
    notes: list[str] = []
    recs = cmp.collect([str(sweep)], notes=notes)
    assert len(recs) == 8  # member paths are relative to the folder above runs/
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
    assert rows[0].best and [r.test_mean for r in rows] == sorted((r.test_mean for r in rows), reverse=True)
    rows = cmp.group(cmp.select(recs)[0], sort="-method.rank")
    assert rows[0].params["method.rank"] == "8"
    with pytest.raises(UserError, match="cannot sort by"):
        cmp.group(recs, sort="colour")


def test_lower_is_better_metric_and_unknown_metric(runs):
    rows, _ = _rows(runs, metric="loss")
    best = next(r for r in rows if r.best)
    assert not best.higher_is_better and best.params == {"method": "pissa", "method.rank": "8"}
    assert best.test_mean == pytest.approx(0.12)
    with pytest.raises(UserError, match="did you mean 'accuracy'"):
        _rows(runs, metric="acuracy")


def test_text_formats(runs):
    rows, _ = _rows(runs)
    md = cmp.to_markdown(rows)
    assert md.startswith("| method | method.rank | test accuracy | n |")
    assert "| pissa | 8 | 0.88 ± 0.014 | 2 |" in md and cmp.BEST_MARK in md and cmp.NOISE_MARK in md
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
    assert "0.88 ± 0.014" in text and "★ best" in text and "method.rank" in text


def test_plot_and_html(runs, tmp_path):
    rows, _ = _rows(runs)
    figs = cmp.plot(rows, tmp_path / "figs")
    names = {f.name for f in figs}
    assert {"loss_curves.png", "val_accuracy.png", "accuracy_vs_rank.png", "accuracy_vs_params.png"} <= names
    assert all(f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in figs)
    recs = [r for row in rows for r in row.records]
    out = cmp.html_report(rows, recs, figs, tmp_path / "report" / "r.html")
    page = out.read_text()
    assert page.count('<img src="data:image/png;base64,') == len(figs)
    assert "<table>" in page and "0.88 ± 0.014" in page and "<details>" in page
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


def _cli(*args, cwd=None):
    env = {**os.environ, "COLUMNS": "220"}
    return subprocess.run([str(CLI), *args], check=False, capture_output=True, text=True, env=env, cwd=cwd)


def test_cli_table_plot_html(runs, tmp_path):
    res = _cli("compare", str(runs), "--plot", str(tmp_path / "figs"), "--html", str(tmp_path / "r.html"))
    assert res.returncode == 0, res.stderr
    assert "method.rank" in res.stdout and "0.88 ± 0.014" in res.stdout and "★ best" in res.stdout
    assert "1 run not completed" in res.stdout
    assert (tmp_path / "figs" / "loss_curves.png").is_file()
    assert '<img src="data:image/png;base64,' in (tmp_path / "r.html").read_text()
    res = _cli("compare", str(runs / "sweeps" / "grid" / "0"), "--format", "csv", "--where", "method=pissa", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert len(list(csv.DictReader(io.StringIO(res.stdout)))) == 2


def test_cli_errors(tmp_path):
    res = _cli("compare", "/nonexistent")
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "/nonexistent" in res.stderr
    res = _cli("compare", str(tmp_path))
    assert res.returncode == 2 and "no runs found" in res.stderr and str(tmp_path) in res.stderr
    res = _cli("compare", str(tmp_path), "--format", "xml")
    assert res.returncode == 2 and "--format" in res.stderr
