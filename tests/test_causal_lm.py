"""Causal LMs: the loss covers response tokens only, computed at those positions alone; runs train,
evaluate the untrained model, save their generations; exports load with PEFT and as plain models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from peftlab import runs
from peftlab.config import compose
from peftlab.tasks.causal_lm import response_logits
from tests.conftest import peftlab

QUICK = ["dataset=arith", "trainer.batch_size=8", "trainer.eval_batch_size=32", "task.max_new_tokens=6",
         "task.validation_generations=8", "task.generation_batch_size=8"]


@pytest.fixture(scope="module")
def lm_experiment():
    from peftlab.experiment import build_experiment

    return build_experiment(compose(["model=tiny_lm", "dataset=arith", "method=lora", "method.rank=4"]))


def _batch(exp, n: int = 6) -> dict:
    from peftlab.evaluate import make_loader

    return next(iter(make_loader(exp.splits["train"].select(range(n)), exp.task.collator(exp.tokenizer), n)))


def test_selected_positions_give_the_full_forwards_masked_loss(lm_experiment):
    exp = lm_experiment
    batch = _batch(exp)
    loss, _ = exp.task.loss(exp.model, batch)
    # independent: every position's logits, shifted, -100 ignored (the transformers convention)
    logits = exp.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    full = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                       batch["labels"][:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(loss, full, atol=1e-5, rtol=1e-5)
    assert (batch["labels"] == -100).any() and (batch["labels"] != -100).any()


def test_prompt_positions_get_no_gradient_from_the_loss(lm_experiment):
    exp = lm_experiment
    batch = _batch(exp)
    captured = {}
    decoder = exp.model.get_decoder()
    handle = decoder.norm.register_forward_hook(lambda m, i, out: captured.update(h=out) or out.retain_grad())
    try:
        loss, _ = exp.task.loss(exp.model, batch)
        loss.backward()
    finally:
        handle.remove()
        exp.model.zero_grad(set_to_none=True)
    grad = captured["h"].grad  # d loss / d final hidden state, per position
    predicts_label = torch.zeros_like(batch["labels"], dtype=torch.bool)
    predicts_label[:, :-1] = batch["labels"][:, 1:] != -100
    assert grad[~predicts_label].abs().max() == 0  # prompt, padding and the last position: nothing
    assert grad[predicts_label].abs().sum(-1).gt(0).all()  # every response position: something


@pytest.mark.parametrize("family", ["gemma2", "gemma3_text"])
def test_soft_capped_logits_match_the_models_own_forward(family):
    import transformers

    config_class = {"gemma2": "Gemma2Config", "gemma3_text": "Gemma3TextConfig"}[family]
    model_class = {"gemma2": "Gemma2ForCausalLM", "gemma3_text": "Gemma3ForCausalLM"}[family]
    if not hasattr(transformers, config_class):
        pytest.skip(f"this transformers has no {config_class}")
    torch.manual_seed(0)
    config = getattr(transformers, config_class)(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=64, final_logit_softcapping=3.0)
    model = getattr(transformers, model_class)(config).eval()
    ids = torch.randint(1, 97, (2, 10))
    labels = ids.clone()
    labels[:, :4] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    logits, targets = response_logits(model, batch)
    full = model(input_ids=ids, attention_mask=batch["attention_mask"]).logits
    keep = labels[:, 1:] != -100
    torch.testing.assert_close(logits, full[:, :-1][keep], atol=1e-5, rtol=1e-5)
    assert torch.equal(targets, labels[:, 1:][keep])


def test_an_untrained_model_is_evaluated_with_max_steps_0(runs_dir):
    result = peftlab("train", "model=tiny_lm", *QUICK, "trainer.max_steps=0", "name=base")
    assert result.returncode == 0, result.stderr
    run = runs.resolve("base", runs_dir)
    s = run.summary
    assert run.status == "completed" and s["steps"] == 0 and s["metric"] == "exact_match"
    assert {"exact_match", "loss", "perplexity"} <= set(s["test"]) and s["test"]["generated"] == 300
    rows = [json.loads(x) for x in (run.generations_dir / "test-step_0000000.jsonl").read_text().splitlines()]
    assert len(rows) == 300 and set(rows[0]) == {"prompt", "output", "target", "prediction", "correct"}
    assert sum(r["correct"] for r in rows) / len(rows) == s["test"]["exact_match"]
    validation = (run.generations_dir / "validation-step_0000000.jsonl").read_text().splitlines()
    assert len(validation) == 8  # task.validation_generations caps what selection generates


@pytest.mark.parametrize("value", ["ten", "0"])
def test_a_bad_number_of_validation_generations_is_one_line_before_any_run(runs_dir, value):
    result = peftlab("train", "model=tiny_lm", *QUICK, f"task.validation_generations={value}", "trainer.max_steps=0")
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"task.validation_generations={value} is not allowed" in lines[0]
    assert not runs_dir.exists() or not list(runs_dir.glob("*/v*"))


def test_eval_on_a_dataset_of_the_other_task_is_one_line_and_dropped_examples_are_said(runs_dir, tmp_path):
    """A causal LM run scored on a classification dataset is refused (it was a KeyError traceback);
    on a dataset whose test prompts do not all fit, the ones left out are counted and said."""
    assert peftlab("train", "model=tiny_lm", *QUICK, "trainer.max_steps=0", "name=lm").returncode == 0
    other = peftlab("eval", "lm", "dataset=stdlib_docs")
    assert other.returncode == 2 and "Traceback" not in other.stderr, other.stderr
    assert "made for the classification task" in other.stderr and "evaluate it on a causal LM dataset" in other.stderr

    folder = tmp_path / "qa"
    folder.mkdir()
    short = [{"prompt": f"what is {i} plus {i}?", "response": f"#### {2 * i}"} for i in range(4)]
    long = [{"prompt": "pad " * 400 + "what is 1 plus 1?", "response": "#### 2"} for _ in range(2)]
    for split, rows in (("train", short), ("validation", short), ("test", short + long)):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    scored = peftlab("eval", "lm", "dataset=sft", f"dataset.path={folder}", "--json")
    assert scored.returncode == 0, scored.stderr
    metrics = json.loads(scored.stdout)
    assert metrics["dropped"] == 2 and metrics["generated"] == 4
    assert "2 test example(s) do not fit the model's max_length and were left out" in scored.stderr


def test_a_causal_lm_run_learns_and_resumes_exactly(runs_dir):
    common = ["model=tiny_lm", *QUICK, "trainer.max_steps=12", "trainer.eval_every=6", "trainer.checkpoint_every=4",
              "optimizer.lr=1e-2", "method.dropout=0.1", "trainer.log_every=2", "trainer.schedule=constant",
              "trainer.warmup_ratio=0"]
    straight = peftlab("train", *common, "name=straight", "-q")
    assert straight.returncode == 0, straight.stderr
    first = peftlab("train", *common, "trainer.max_steps=8", "name=cut", "-q")
    assert first.returncode == 0, first.stderr
    cut = runs.resolve("cut", runs_dir)
    cut.set_status("interrupted")  # as if stopped after its step-8 checkpoint
    cut.summary_path.unlink()
    resumed = peftlab("train", "resume=cut", "trainer.max_steps=12", "-q")
    assert resumed.returncode == 0, resumed.stderr
    a = [r for r in runs.resolve("straight", runs_dir).metrics() if r["split"] == "train"]
    b = [r for r in runs.resolve("cut", runs_dir).metrics() if r["split"] == "train"]
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert a[-1]["loss"] < a[0]["loss"]  # the response loss goes down


@pytest.fixture(scope="module")
def lm_base(tmp_path_factory) -> Path:
    """The tiny LM with fixed random weights saved as an ordinary checkpoint: an original base model."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source = Path(__file__).resolve().parents[1] / "peftlab" / "assets" / "tiny_lm"
    folder = tmp_path_factory.mktemp("lm-base")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source))
    with torch.no_grad():  # larger weights: greedy outputs that depend on the adapter
        for p in model.parameters():
            p.mul_(8.0)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "pissa"])
def test_peft_export_generates_what_the_merged_export_generates(runs_dir, lm_base, tmp_path, method):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    trained = peftlab("train", "model=hf", f"model.name={lm_base}", *QUICK, f"method={method}", "method.rank=4",
                      "trainer.max_steps=6", "optimizer.lr=5e-2", "trainer.eval_every=0", "name=lm", "-q")
    assert trained.returncode == 0, trained.stderr
    for fmt in ("peft", "merged"):
        done = peftlab("export", "lm", str(tmp_path / fmt), "--format", fmt)
        assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    prompt = tokenizer(["Tom has 3 apples and buys 4 more. How many apples does he have?\n"], return_tensors="pt")
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(lm_base), tmp_path / "peft").eval()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    base = AutoModelForCausalLM.from_pretrained(lm_base).eval()
    with torch.no_grad():
        a = peft_model.generate(**prompt, max_new_tokens=32, do_sample=False)
        b = merged.generate(**prompt, max_new_tokens=32, do_sample=False)
        logits_changed = not torch.allclose(base(**prompt).logits, merged(**prompt).logits, atol=1e-4)
    assert torch.equal(a, b) and logits_changed
    evaluated = peftlab("eval", str(tmp_path / "merged"), "--split", "test", "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    assert "exact_match" in json.loads(evaluated.stdout)


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_a_split_whose_every_prompt_fills_max_length_is_refused_before_any_run(runs_dir, tmp_path, split):
    """An empty validation or test split would score nothing (NaN): a completed run without a result."""
    folder = tmp_path / "qa"
    folder.mkdir()
    short = [{"prompt": f"what is {i} plus {i}?", "response": f"#### {2 * i}"} for i in range(4)]
    long = [{"prompt": "pad " * 400 + "what is 1 plus 1?", "response": "#### 2"} for _ in range(2)]
    for name in ("train", "validation", "test"):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (long if name == split else short)))
    result = peftlab("train", "model=tiny_lm", "dataset=sft", f"dataset.path={folder}", "trainer.max_steps=0")
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"every {split} example's prompt fills model.max_length" in lines[0]
    assert not runs_dir.exists() or not list(runs_dir.glob("*/v*"))


@pytest.mark.parametrize("dataset, marker", [("arith", "####"), ("gsm8k", "####"),
                                             ("metamathqa", "The answer is:"), ("alpaca", None)])
def test_the_answer_is_read_after_the_datasets_own_marker(dataset, marker):
    """MetaMathQA's responses end 'The answer is: 18': a generation that runs on past its answer
    is scored on the number after that marker, not on the last number it wrote."""
    from peftlab.answers import exact_match
    from peftlab.tasks.causal_lm import CausalLM

    cfg = compose(["model=tiny_lm", f"dataset={dataset}"])
    assert cfg.task.answer_marker == marker == cfg.dataset.get("answer_from", "####")
    task = CausalLM(answer_marker=cfg.task.answer_marker)
    if marker == "The answer is:":
        assert exact_match("so 9 + 9 = 18. The answer is: 18\n\nQuestion: what is 7?", "18", task.answer_marker)
    if marker is None:  # no marker: the last number
        assert task.answer_marker == "" and exact_match("it is 3, then 4", "4", task.answer_marker)
