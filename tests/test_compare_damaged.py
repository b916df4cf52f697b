"""``peftlab compare`` when run files are damaged, and at narrow terminal widths (fabricated runs, no torch)."""

from __future__ import annotations

import io

import pytest

from peftlab import compare as cmp
from tests.fabricated_runs import fabricate_run, grouped_rows, run_cli

pytestmark = pytest.mark.usefixtures("hermetic")


# ------------------------------------------------------------ damaged files ---
DAMAGED = [
    ("meta.json", "[]", "is not a JSON object"),
    ("meta.json", "3", "is not a JSON object"),
    ("meta.json", '{"status": "compl', "is not valid JSON"),
    ("summary.json", "[1, 2]", "is not a JSON object"),
    ("summary.json", "3", "is not a JSON object"),
    ("config.yaml", "- a\n- b\n", "is not a mapping"),
    ("config.yaml", "a: [unclosed\n", "is not valid YAML"),
    ("overrides.txt", b"method=\xff\n", "is not UTF-8 text"),
]


@pytest.mark.parametrize("include_all", [False, True])
@pytest.mark.parametrize(("name", "content", "problem"), DAMAGED)
def test_damaged_run_file_is_named_and_left_out(runs, name, content, problem, include_all):
    best = runs / "pissa-minilm-stdlib_docs" / "v3"  # pissa rank 8 seed 1: part of the best row
    target = best / name
    target.write_bytes(content if isinstance(content, bytes) else content.encode())
    notes: list[str] = []
    recs = cmp.collect([str(runs)], notes=notes)
    assert f"{target} {problem}: left out" in notes
    assert best not in {r.path for r in recs}
    kept, _ = cmp.select(recs, include_all=include_all)
    assert len(kept) == (8 if include_all else 7)  # 8 completed + 1 running - the damaged one
    rows = cmp.group(kept)
    assert all(r.status in ("completed", "running") for r in kept)
    assert sum(r.best for r in rows) == 1


def test_unreadable_summary_is_named(runs):
    target = runs / "lora-minilm-stdlib_docs" / "v0" / "summary.json"
    target.unlink()
    target.mkdir()  # a folder where the file should be: unreadable even for root
    notes: list[str] = []
    recs = cmp.collect([str(runs)], notes=notes)
    assert any(n.startswith(f"{target} cannot be read") and n.endswith(": left out") for n in notes)
    assert target.parent not in {r.path for r in recs}


def test_damaged_analysis_only_loses_the_analysis(runs):
    target = runs / "lora-minilm-stdlib_docs" / "v0" / "analysis.json"
    target.write_text("[]")
    notes: list[str] = []
    recs = cmp.collect([str(runs)], notes=notes)
    assert f"{target} is not a JSON object: its analysis is ignored" in notes
    rec = next(r for r in recs if r.path == target.parent)
    assert rec.analysis is None


@pytest.mark.parametrize("content", ["[]", "3", "{oops", '{"members": 3}'])
def test_damaged_sweep_json_is_noted(runs, content):
    sweep = runs / "sweeps" / "grid" / "v1"
    (sweep / "sweep.json").write_text(content)
    notes: list[str] = []
    assert cmp.collect([str(sweep)], notes=notes) == []
    assert any(n.startswith(str(sweep / "sweep.json")) and "members are not read" in n for n in notes)


def test_cli_names_the_damaged_file_when_no_run_is_left(tmp_path):
    d = fabricate_run(tmp_path / "runs", "lora", 8, 0, 0.8, version=1)
    (d / "meta.json").write_text("[]")
    res = run_cli("compare", str(tmp_path / "runs"), "--all")
    assert res.returncode == 2, res.stderr
    assert f"{d / 'meta.json'} is not a JSON object: left out" in res.stderr
    assert "Traceback" not in res.stderr


def test_cli_notes_a_damaged_run_beside_the_others(runs):
    (runs / "lora-minilm-stdlib_docs" / "v0" / "meta.json").write_text("3")
    res = run_cli("compare", str(runs), "--all")
    assert res.returncode == 0, res.stderr
    assert "meta.json is not a JSON object: left out" in res.stdout and "unknown" not in res.stdout


# ------------------------------------------------------------------ widths ---
def _table_text(rows, width: int) -> str:
    from rich.console import Console

    console = Console(width=width, record=True, file=io.StringIO())
    console.print(cmp.render_table(rows, title="t", width=width))
    return console.export_text()


def _metric_strings(rows) -> list[str]:
    return [cmp.fmt_metric(v) for r in rows for v in (r.val_mean, r.val_std, r.test_mean, r.test_std)]


@pytest.mark.parametrize("width", [60, 80, 120])
def test_table_fits_the_width_and_keeps_every_metric_whole(runs, width):
    rows, _ = grouped_rows(runs)
    text = _table_text(rows, width)
    assert max(len(line.rstrip()) for line in text.splitlines()) <= width
    for s in _metric_strings(rows):
        assert s in text
    if width >= 80:  # mean ± std on one line
        assert "0.8900 ± 0.0141" in text and "0.8800 ± 0.0141" in text
    assert "★ best" in text and "≈ best" in text
    if width < 120:
        assert "Left out at this width: peak MB" in " ".join(text.split())  # the caption wraps anywhere


def test_long_configuration_label_wraps_instead_of_the_metric(tmp_path):
    d = fabricate_run(tmp_path / "runs", "lora", 8, 0, 0.123456, version=1)
    (d / "overrides.txt").write_text("method=lora\n" + "".join(f"+extra.option_{i}=value_{i}\n" for i in range(12)))
    rows, _ = grouped_rows(tmp_path / "runs")
    for width in (60, 80):
        text = _table_text(rows, width)
        assert max(len(line.rstrip()) for line in text.splitlines()) <= width
        assert "0.1335" in text and "0.1235" in text  # validation, test: whole


@pytest.mark.parametrize("width", [60, 80, 120])
def test_cli_piped_at_narrow_width_shows_the_metric_whole(runs, width):
    res = run_cli("compare", str(runs), columns=width)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= width
    assert "0.8900" in res.stdout and "0.8800" in res.stdout and "± 0.0141" in res.stdout


