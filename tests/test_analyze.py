"""`peftlab analyze RUN` and `analysis=spectral` on real tiny runs."""

from __future__ import annotations

import json

from peftlab import runs
from tests.conftest import peftlab

FAST = ["model=tiny", "trainer.max_steps=6", "trainer.batch_size=16", "trainer.eval_every=0",
        "trainer.checkpoint_every=0", "-q"]


def test_analyze_writes_diagnostics_for_every_adapted_layer(runs_dir):
    assert peftlab("train", *FAST, "method.rank=2").returncode == 0
    run = runs.list_runs(runs_dir)[0]
    result = peftlab("analyze", run.label)
    assert result.returncode == 0, result.stderr
    analysis = json.loads((run.path / "analysis.json").read_text())
    # tiny BERT: 2 layers x (query, key, value, attention output, intermediate, output)
    assert analysis["model"]["layers"] == 12 and len(analysis["layers"]) == 12
    for row in analysis["layers"].values():
        # A rank-2 LoRA update has effective rank at most 2 and at most top_k intruders.
        assert 0 < row["rankme"] <= 2.0 + 1e-3
        assert 0 <= row["intruders"] <= 10 and row["frobenius_norm"] >= row["spectral_norm"] > 0
    assert "intruders" in result.stdout


def test_spectral_analysis_at_the_end_of_training_also_for_full_finetuning(runs_dir):
    assert peftlab("train", *FAST, "method=full", "analysis=spectral").returncode == 0
    run = runs.list_runs(runs_dir)[0]
    analysis = json.loads((run.path / "analysis.json").read_text())
    assert analysis["model"]["layers"] == 12  # the same matrices as the adapters would touch
    compared = peftlab("compare", str(run.path), "--format", "json")
    assert compared.returncode == 0, compared.stderr
    assert "intruders" in compared.stdout


def test_analyze_refuses_an_unfinished_run(runs_dir):
    folder = runs.allocate(runs_dir, "broken")
    folder.write_meta(status="failed")
    result = peftlab("analyze", "broken")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
