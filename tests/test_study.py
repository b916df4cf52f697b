"""``peftlab study``: the tuning grid, the choice on validation only, the final seeds, continuing, bad input."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from peftlab.errors import UserError
from peftlab.runs import Run
from peftlab.finding import study_runs
from peftlab.study.choose import Choice, choose, edge_notes
from peftlab.study.spec import parse_tune
from peftlab.sweep.status import Member
from tests.conftest import peftlab
from tests.fabricated_runs import as_if_stopped_early, fabricate_run, set_config

TINY = ["model=tiny", "trainer.max_steps=3", "trainer.eval_every=0", "trainer.log_every=1"]
LR = "optimizer.lr=tag(log,interval(1e-4,1e-2))"


# ------------------------------------------------------------------ the --tune syntax
def test_a_log_interval_is_spaced_evenly_in_log_space():
    tuned = parse_tune("optimizer.lr=tag(log,interval(1e-5,1e-2))", 4)
    expected = [10 ** (-5 + i) for i in range(4)]  # log10 steps of (−2 − (−5)) / 3 = 1
    assert [float(v) for v in tuned.values] == pytest.approx(expected, rel=1e-3) and tuned.log
    assert tuned.key == "optimizer.lr"


def test_a_plain_interval_is_spaced_evenly_and_a_list_is_taken_as_given():
    assert parse_tune("trainer.warmup_ratio=interval(0,0.1)", 3).values == ("0", "0.05", "0.1")
    assert parse_tune("method.rank=4,8,16", 99).values == ("4", "8", "16")
    one = parse_tune("optimizer.lr=tag(log,interval(1e-4,1e-2))", 1).values
    assert float(one[0]) == pytest.approx(math.sqrt(1e-4 * 1e-2))


def test_a_range_is_hydras_with_floats_and_its_stop_left_out():
    assert parse_tune("method.rank=range(2,10,4)", 3).values == ("2", "6")
    assert parse_tune("trainer.warmup_ratio=range(0.1,0.5,0.1)", 3).values == ("0.1", "0.2", "0.3", "0.4")
    assert parse_tune("method.rank=range(16,1,-8)", 3).values == ("16", "8")


def test_an_interval_with_integer_bounds_tries_integers_and_the_bounds_are_kept_as_typed():
    """interval(1,8) on a rank gives ranks (Hydra reads the bounds as floats: 3.33 would fail to train);
    a bound never loses digits to the 3-digit display (1024, not 1.02e+03)."""
    assert parse_tune("method.rank=interval(1,8)", 4).values == ("1", "3", "6", "8")  # 1, 3.33, 5.67, 8
    assert parse_tune("method.rank=tag(log,interval(8,1024))", 3).values == ("8", "91", "1024")  # 8·√128 = 90.5
    assert parse_tune("method.rank=interval(1000,1003)", 4).values == ("1000", "1001", "1002", "1003")
    assert parse_tune("trainer.warmup_ratio=interval(0.5,1024)", 3).values == ("0.5", "512", "1024")
    with pytest.raises(UserError, match="only 3 distinct integers"):
        parse_tune("method.rank=interval(1,3)", 5)


def test_a_forced_key_is_the_key_itself(runs_dir):
    """``++optimizer.lr=...`` tunes optimizer.lr: configurations, choices and clashes see one key."""
    assert parse_tune("++optimizer.lr=1e-4,1e-3", 3).key == "optimizer.lr"
    res = peftlab("study", "model=tiny", "method=lora,pissa", "--tune", "++optimizer.lr=1e-4,1e-3", "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "2 configuration(s) x 2 setting(s) = 4 tuning run(s)" in res.stdout.splitlines()[0]


@pytest.mark.parametrize("text, trials, message", [
    ("optimizer.lr=interval(1e-2,1e-4)", 3, "is an empty range"),
    ("optimizer.lr=interval(1e-2,1e-2)", 3, "is an empty range"),
    ("optimizer.lr=tag(log,interval(0,1))", 3, "a log interval needs 0 < lo"),
    ("optimizer.lr=3e-4", 3, "one value, nothing to tune"),
    ("optimizer.lr", 3, "is not KEY=SPEC"),
    ("optimizer.lr=interval(1e-4,", 3, "cannot be read"),
    ("optimizer.lr=interval(1e-4,1e-2)", 0, "--trials 0 is not allowed"),
    ("optimizer.lr=interval(1.000,1.001)", 20, "the values repeat"),
    ("method.rank=range(1,5,0)", 3, "has step 0"),
    ("method.rank=range(5,1)", 3, "has no values"),
    ("~optimizer.lr=1e-4,1e-3", 3, "deletes optimizer.lr"),
])
def test_bad_tuning_specs_are_one_line_errors(text, trials, message):
    with pytest.raises(UserError, match=message) as err:
        parse_tune(text, trials)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------ the choice
def _planted(root: Path, lr: str, val: float, test: float, index: int, method: str = "lora") -> Member:
    run = fabricate_run(root, method, 8, 0, test, version=index)
    summary = json.loads((run / "summary.json").read_text())
    summary["best_validation"]["accuracy"] = summary["final_validation"]["accuracy"] = val
    (run / "summary.json").write_text(json.dumps(summary))
    return Member(index, [f"method={method}", f"optimizer.lr={lr}", "seed=0"], Run(run), "completed")


def test_the_setting_is_chosen_on_validation_never_on_test(tmp_path):
    members = [
        _planted(tmp_path, "0.0001", val=0.70, test=0.99, index=0),  # best on test, worst on validation
        _planted(tmp_path, "0.001", val=0.85, test=0.60, index=1),
        _planted(tmp_path, "0.01", val=0.80, test=0.70, index=2),
        Member(3, ["method=lora", "optimizer.lr=0.1", "seed=0"], None, "failed"),
    ]
    (choice,) = choose(members, ["optimizer.lr"], "accuracy")
    assert choice.setting == ["optimizer.lr=0.001"] and choice.validation == 0.85
    assert choice.configuration == ["method=lora"] and (choice.tried, choice.completed) == (4, 3)


def test_a_lower_is_better_metric_chooses_the_smallest(tmp_path):
    members = [_planted(tmp_path, lr, val=v, test=0.5, index=i) for i, (lr, v) in enumerate([("0.001", 0.3), ("0.01", 0.2)])]
    for m in members:  # rank by loss instead: the summary's loss is 0.9 - test for both, so set it per run
        summary = json.loads((m.run.path / "summary.json").read_text())
        summary["best_validation"]["loss"] = summary["final_validation"]["loss"] = summary["best_validation"]["accuracy"]
        (m.run.path / "summary.json").write_text(json.dumps(summary))
    (choice,) = choose([Member(m.index, m.overrides, Run(m.run.path), m.status) for m in members], ["optimizer.lr"], "loss")
    assert choice.setting == ["optimizer.lr=0.01"]


def test_a_choice_at_either_end_of_an_interval_is_named_and_one_inside_is_not():
    lr = parse_tune("optimizer.lr=tag(log,interval(1e-4,1e-2))", 3)  # 0.0001, 0.001, 0.01
    rank = parse_tune("method.rank=4,8,16", 3)  # a list: no order to be at the end of
    choices = [Choice(["method=lora"], ["optimizer.lr=0.0001", "method.rank=4"]),
               Choice(["method=pissa"], ["optimizer.lr=0.001", "method.rank=16"]),
               Choice(["method=dora"], ["optimizer.lr=0.01", "method.rank=8"]),
               Choice(["method=sorsa"])]  # nothing completed: nothing chosen
    notes = edge_notes(choices, [lr, rank])
    assert len(notes) == 2
    assert notes[0].startswith("method=lora: optimizer.lr=0.0001 is the lowest value searched")
    assert notes[1].startswith("method=dora: optimizer.lr=0.01 is the highest value searched")
    two = parse_tune("optimizer.lr=tag(log,interval(1e-4,1e-2))", 2)  # every choice is an end: nothing to say
    assert edge_notes(choices[:1], [two]) == []


def test_compare_on_a_study_names_a_choice_at_the_end_of_its_range(tmp_path):
    final = tmp_path / "sweeps" / "s-final" / "v1"
    final.mkdir(parents=True)
    (final / "sweep.json").write_text(json.dumps({"name": "s-final", "version": "v1", "members": []}))
    study_dir = tmp_path / "studies" / "s" / "v1"
    study_dir.mkdir(parents=True)
    tuned = parse_tune("optimizer.lr=tag(log,interval(1e-4,1e-2))", 3)
    (study_dir / "study.json").write_text(json.dumps({
        "tuned": [tuned.record()], "final_sweep": "sweeps/s-final/v1",
        "chosen": [Choice(["method=lora"], ["optimizer.lr=0.001"], 0.8, 3, 3).record(),
                   Choice(["method=adalora"], ["optimizer.lr=0.01"], 0.9, 3, 3).record()]}))
    notes: list[str] = []
    study_runs(study_dir, notes)
    assert [n for n in notes if "value searched" in n] == [
        f"study {study_dir}: method=adalora: optimizer.lr=0.01 is the highest value searched; its best may lie "
        "beyond the range (widen --tune to settle it)"]


# ------------------------------------------------------------------ end to end on the tiny model
def _completed(root: Path) -> list[dict]:
    metas = [json.loads(p.read_text()) for p in root.glob("*/v*/meta.json")]
    return [m for m in metas if m.get("status") == "completed"]


def test_a_study_tunes_every_configuration_alike_then_reruns_the_best_with_fresh_seeds(runs_dir):
    res = peftlab("study", *TINY, "method=lora,pissa", "--tune", LR, "--trials", "2", "--seeds", "2")
    assert res.returncode == 0, res.stderr
    study_dir = next((runs_dir / "studies").glob("*/v1"))
    data = json.loads((study_dir / "study.json").read_text())
    assert data["seeds"] == [1, 2] and data["tune_seed"] == 0
    assert [t["values"] for t in data["tuned"]] == [["0.0001", "0.01"]]
    assert len(data["chosen"]) == 2 and all(c["completed"] == 2 for c in data["chosen"])
    completed = _completed(runs_dir)
    assert len(completed) == 2 * 2 + 2 * 2
    final = [m for m in completed if "final" in m["sweep"]["name"]]
    assert sorted(m["seed"] for m in final) == [1, 1, 2, 2]  # never the tuning seed
    chosen = {next(o for o in c["configuration"] if o.startswith("method=")).partition("=")[2]:
              float(c["setting"][0].partition("=")[2]) for c in data["chosen"]}
    for meta_file in runs_dir.glob("*/v*/meta.json"):  # every final run trains at its configuration's choice
        meta = json.loads(meta_file.read_text())
        if "final" in meta["sweep"]["name"]:
            cfg = yaml.safe_load((meta_file.parent / "config.yaml").read_text())
            assert cfg["optimizer"]["lr"] == pytest.approx(chosen[meta["choices"]["method"]])
    figures = runs_dir.parent / "figs"
    res = peftlab("compare", str(study_dir), "--plot", str(figures))
    assert res.returncode == 0, res.stderr
    assert (figures / "sensitivity.png").read_bytes()[:4] == b"\x89PNG"
    res = peftlab("compare", str(study_dir), "--format", "json")
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)["rows"]
    assert len(rows) == 2 and all(r["n"] == 2 for r in rows)
    assert all(r["test_ci95"] is not None for r in rows)
    assert sorted(r["learning_rates"][0] for r in rows) == sorted(
        float(c["setting"][0].partition("=")[2]) for c in data["chosen"])


def _launch(args: list[str], runs_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "PEFTLAB_RUNS_DIR": str(runs_dir), "COLUMNS": "200"}
    return subprocess.Popen([sys.executable, "-m", "peftlab", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_an_interrupted_study_continues_with_only_the_missing_runs(runs_dir):
    args = ["study", *TINY, "trainer.max_steps=30", "method=lora", "--tune", LR, "--trials", "3", "--seeds", "1"]
    proc = _launch(args, runs_dir)
    deadline = time.time() + 300
    while time.time() < deadline and not _completed(runs_dir):
        time.sleep(0.2)
    assert _completed(runs_dir), "no tuning run completed in time"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, f"rc {proc.returncode}\n{out}\n{err}"
    assert "peftlab study --continue" in out
    before = {p.parent for p in runs_dir.glob("*/v*/summary.json")}
    study_dir = next((runs_dir / "studies").glob("*/v1"))
    res = peftlab("study", "--continue", str(study_dir))
    assert res.returncode == 0, res.stderr
    completed = _completed(runs_dir)
    members = [(m["sweep"]["name"], m["sweep"]["member"]) for m in completed]
    told = f"completed {sorted(members)}\nfirst:\n{out}\n{err}\ncontinued:\n{res.stdout}\n{res.stderr}"
    assert len(completed) == 3 + 1, told
    assert len(set(members)) == len(members), told  # no member ran twice to completion
    assert before <= {p.parent for p in runs_dir.glob("*/v*/summary.json")}  # finished runs kept as they were
    again = peftlab("study", "--continue", str(study_dir))
    assert again.returncode == 0 and len(_completed(runs_dir)) == 4  # nothing left: nothing runs


def test_nothing_is_chosen_while_a_tuning_run_is_unfinished(runs_dir):
    """A tuning run can stay unfinished without the study being interrupted (here: its resume fails).

    The study then chooses nothing and starts no final run: a choice among the settings
    that happened to finish would be made on part of the grid.
    """
    res = peftlab("study", *TINY, "trainer.checkpoint_every=1", "method=lora", "--tune", "optimizer.lr=1e-3,1e-2",
                  "--seeds", "1", "--name", "s")
    assert res.returncode == 0, res.stdout + res.stderr
    study_dir = runs_dir / "studies" / "s" / "v1"
    data = json.loads((study_dir / "study.json").read_text())
    shutil.rmtree(runs_dir / data["final_sweep"])  # back to the moment tuning ended, one run interrupted
    for run in [p.parent for p in runs_dir.glob("*/v*/meta.json")]:
        if json.loads((run / "meta.json").read_text())["sweep"]["name"] == "s-final":
            shutil.rmtree(run)
    (study_dir / "study.json").write_text(json.dumps({**data, "final_sweep": None, "chosen": None}))
    tuning = sorted(p.parent for p in runs_dir.glob("*/v*/meta.json"))
    as_if_stopped_early(tuning[1], checkpoints_kept=1, trainer={"precision": "fp16"})  # it cannot resume here

    res = peftlab("study", "--continue", str(study_dir))
    assert res.returncode == 130, res.stdout + res.stderr
    assert "1 of 2 tuning run(s) did not finish (interrupted): nothing is chosen on part of the grid" in res.stdout
    after = json.loads((study_dir / "study.json").read_text())
    assert after["chosen"] is None and after["final_sweep"] is None
    assert not list((runs_dir / "sweeps" / "s-final").glob("v*"))

    set_config(tuning[1], trainer={"precision": "fp32"})
    res = peftlab("study", "--continue", str(study_dir), "--jobs", "1")
    assert res.returncode == 0, res.stdout + res.stderr
    after = json.loads((study_dir / "study.json").read_text())
    assert after["chosen"][0]["completed"] == 2 and after["final_sweep"]
    # the final sweep, made by this --continue, runs as it asked (the tuning sweep ran in-process)
    final = json.loads((runs_dir / after["final_sweep"] / "sweep.json").read_text())
    assert final["launcher"] == "joblib" and "hydra.launcher.n_jobs=1" in final["hydra_overrides"]


def test_a_tuning_run_failed_by_a_full_disk_is_run_again_before_anything_is_chosen(runs_dir):
    """A full disk says nothing about a learning rate: the study does not choose without that
    setting (a choice on part of the grid), and --continue runs it again, then chooses."""
    from peftlab.study import continue_study

    res = peftlab("study", *TINY, "method=lora", "--tune", "optimizer.lr=1e-3,1e-2", "--seeds", "1", "--name", "d")
    assert res.returncode == 0, res.stdout + res.stderr
    study_dir = runs_dir / "studies" / "d" / "v1"
    data = json.loads((study_dir / "study.json").read_text())
    shutil.rmtree(runs_dir / data["final_sweep"])  # back to the moment tuning ended
    for run in [p.parent for p in runs_dir.glob("*/v*/meta.json")]:
        if json.loads((run / "meta.json").read_text())["sweep"]["name"] == "d-final":
            shutil.rmtree(run)
    (study_dir / "study.json").write_text(json.dumps({**data, "final_sweep": None, "chosen": None}))
    full = Run(sorted(p.parent for p in runs_dir.glob("*/v*/meta.json"))[1])
    full.summary_path.unlink()
    full.set_status("failed", error="no space left on device", failure="storage")

    told: list[str] = []
    outcome = continue_study(str(study_dir), announce=told.append)
    assert not outcome.interrupted and outcome.failed == 0, told
    (choice,) = json.loads((study_dir / "study.json").read_text())["chosen"]
    assert (choice["tried"], choice["completed"]) == (2, 2)
    from peftlab.sweep import members

    tuning = members(runs_dir / data["tune_sweep"])
    assert [m.status for m in tuning] == ["completed", "completed"]  # no checkpoint was kept: run again, anew
    assert Run(full.path).status == "failed" and tuning[1].run.path != full.path  # the failed one is kept


@pytest.mark.parametrize("option", [["--seeds", "5"], ["--trials", "2"], ["--tune-seed", "7"], ["--name", "x"]])
def test_continue_refuses_what_the_study_stored(runs_dir, option):
    """A new number of seeds on --continue would silently not apply: it is refused, naming the option."""
    res = peftlab("study", "--continue", "nothing-yet", *option)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"--continue takes only --jobs and --runs-dir ({option[0]} given)" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["--tune", "optimizer.lrx=1e-4,1e-3"], "unknown config key 'optimizer.lrx'"),
    (["--tune", "optimizer.lr=interval(1e-2,1e-4)"], "is an empty range"),
    (["--tune", LR, "--trials", "0"], "--trials 0 is not allowed"),
    (["--tune", LR, "--seeds", "0"], "--seeds 0 is not allowed"),
    (["seed=3", "--tune", LR], "a study sets the seeds itself"),
    (["optimizer.lr=1e-3", "--tune", LR], "which --tune searches"),
    (["optimizer.lr=1e-3", "--tune", "++" + LR], "which --tune searches"),
    (["--tune", "trainer.warmup_ratio=range(0.1,0.2,0)"], "has step 0"),
    (["--tune", LR, "--tune", "optimizer.lr=1,2"], "names a key twice"),
    (["--tune", "seed=0,1,2"], "a study sets the seeds itself"),
    (["--tune", "name=a,b"], "use --name for the study"),
    ([], "a study needs --tune"),
])
def test_bad_study_commands_exit_2_with_one_line_and_create_nothing(runs_dir, args, message):
    res = peftlab("study", "model=tiny", "method=lora,pissa", *args)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not runs_dir.exists() or not any(runs_dir.iterdir())


def _tuning_study(root: Path, planted: list[Member], chosen: list[dict]) -> Path:
    """A study folder whose tuning sweep lists the ``planted`` runs, as ``peftlab study`` leaves one."""
    from peftlab.study import folder

    sweep = root / "sweeps" / "s-tune" / "v1"
    sweep.mkdir(parents=True)
    listed = []
    for m in planted:  # make the planted runs members of a tuning sweep, as train stamps them
        meta = json.loads((m.run.path / "meta.json").read_text())
        meta["sweep"] = {"path": "sweeps/s-tune/v1", "name": "s-tune", "version": "v1", "member": m.index}
        (m.run.path / "meta.json").write_text(json.dumps(meta))
        listed.append({"index": m.index, "overrides": ["model=tiny", *m.overrides]})
    (sweep / "sweep.json").write_text(json.dumps({"name": "s-tune", "version": "v1", "members": listed}))
    return folder.create(root, "s", {"tuned": [parse_tune(LR, 3).record()], "metric": "accuracy",
                                     "tune_sweep": "sweeps/s-tune/v1", "chosen": chosen})


def _saved_figure(monkeypatch) -> dict:
    from matplotlib.figure import Figure

    saved: dict = {}
    monkeypatch.setattr(Figure, "savefig", lambda fig, path, **kw: saved.__setitem__("fig", fig))
    return saved


def test_the_sensitivity_figure_draws_validation_against_the_tuned_value_and_circles_the_choice(tmp_path, monkeypatch):
    from peftlab.study.sensitivity import plot_sensitivity

    root = tmp_path / "runs"
    planted = [_planted(root, lr, val=v, test=0.5, index=i)
               for i, (lr, v) in enumerate([("0.0001", 0.7), ("0.001", 0.8), ("0.01", 0.75)])]
    study = _tuning_study(root, planted, [{"configuration": ["model=tiny", "method=lora"],
                                          "setting": ["optimizer.lr=0.001"]}])
    saved = _saved_figure(monkeypatch)
    assert plot_sensitivity(study, tmp_path / "figs") is not None
    ax = saved["fig"].axes[0]
    line = ax.get_lines()[0]
    assert list(line.get_xdata()) == [1e-4, 1e-3, 1e-2] and list(line.get_ydata()) == [0.7, 0.8, 0.75]
    assert ax.get_xscale() == "log" and [t.get_text() for t in ax.get_legend().get_texts()] == ["model=tiny method=lora"]
    circled = ax.get_lines()[1]  # the chosen point
    assert list(circled.get_xdata()) == [1e-3] and list(circled.get_ydata()) == [0.8]


def test_a_study_is_run_by_one_process_at_a_time(runs_dir):
    """While one process runs a study, a --continue of it from another is refused; after, it goes on."""
    from peftlab.study import folder

    res = peftlab("study", *TINY, "method=lora", "--tune", "optimizer.lr=1e-3,1e-2", "--seeds", "1", "--name", "s")
    assert res.returncode == 0, res.stdout + res.stderr
    study = runs_dir / "studies" / "s" / "v1"
    with folder.held(study):
        res = peftlab("study", "--continue", str(study))
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        assert f"study '{study.resolve()}' is being written by process {os.getpid()}" in res.stderr
    res = peftlab("study", "--continue", str(study))
    assert res.returncode == 0 and "nothing to continue" in res.stdout, res.stdout + res.stderr


def test_configurations_that_differ_by_one_key_are_named_by_its_value_under_a_legend_title(tmp_path, monkeypatch):
    from peftlab.study.sensitivity import plot_sensitivity

    root = tmp_path / "runs"
    planted = [_planted(root, lr, val=v, test=0.5, index=i, method=method)
               for i, (method, lr, v) in enumerate([("lora", "0.001", 0.8), ("lora", "0.01", 0.7),
                                                    ("pissa", "0.001", 0.6), ("pissa", "0.01", 0.9)])]
    study = _tuning_study(root, planted, [
        {"configuration": ["model=tiny", "method=lora"], "setting": ["optimizer.lr=0.001"]},
        {"configuration": ["model=tiny", "method=pissa"], "setting": ["optimizer.lr=0.01"]}])
    saved = _saved_figure(monkeypatch)
    assert plot_sensitivity(study, tmp_path / "figs") is not None
    legend = saved["fig"].axes[0].get_legend()
    assert legend.get_title().get_text() == "method"
    assert [t.get_text() for t in legend.get_texts()] == ["lora", "pissa"]
    lines = saved["fig"].axes[0].get_lines()
    curves, circles = [ln for ln in lines if len(ln.get_xdata()) == 2], [ln for ln in lines if len(ln.get_xdata()) == 1]
    assert [list(c.get_ydata()) for c in circles] == [[0.8], [0.9]]
    assert [c.get_color() for c in circles] == [c.get_color() for c in curves]  # each circle in its line's colour


def test_configurations_are_labelled_by_what_differs():
    from peftlab.study.choose import distinguishing

    assert distinguishing([["model=tiny", "method=lora"], ["model=tiny", "method=pissa"]]) == ["method=lora", "method=pissa"]
    assert distinguishing([["model=tiny"], ["model=tiny"]]) == ["(defaults)", "(defaults)"]
    assert distinguishing([["model=tiny", "method=lora"]]) == ["model=tiny method=lora"]
