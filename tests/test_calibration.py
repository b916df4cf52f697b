"""The calibration pass: CorDA's covariance against its definition, streaming, the cache, data choices.

Statistics are checked against the equations computed here from layer inputs
captured with plain forward hooks, not by calling the code under test twice.
"""

from __future__ import annotations

import threading

import pytest
import torch

from peftlab.calibration import CalibrationData, Request
from peftlab.calibration.covariance import Covariance, groups_within
from peftlab.calibration.run import calibrate, collect
from peftlab.config import build, compose
from peftlab.errors import UserError
from peftlab.models import architecture
from tests.test_method_contract import tiny_bert, tiny_llama

LLAMA_TARGETS = list(architecture("llama").targets)


def padded_batches(n_batches: int = 3, size: int = 3, length: int = 10, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        ids = torch.randint(1, 120, (size, length), generator=g)
        lengths = torch.randint(4, length + 1, (size,), generator=g)
        mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
        labels = torch.where(torch.arange(length)[None, :] < 2, torch.tensor(-100), ids)  # a 2-token "prompt"
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


def layer_inputs(model, names, batches) -> dict[str, list[torch.Tensor]]:
    """Each layer's input per example, padding removed, captured independently of the code under test."""
    seen = {n: [] for n in names}
    handles = [model.get_submodule(n).register_forward_hook(
        lambda m, args, out, n=n: seen[n].append(args[0].detach())) for n in names]
    with torch.no_grad():
        for b in batches:
            model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    for h in handles:
        h.remove()
    per_example = {n: [] for n in names}
    for n in names:
        for x, b in zip(seen[n], batches):
            per_example[n] += [x[i][b["attention_mask"][i].bool()] for i in range(x.shape[0])]
    return per_example


def targets(model) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.split(".")[-1] in LLAMA_TARGETS]


def test_covariance_is_the_mean_of_scaled_input_products_and_shared_inputs_share_it():
    model = tiny_llama()
    names = targets(model)
    batches = padded_batches()
    stats = collect(model, Request(Covariance(), names, CalibrationData()), batches)
    inputs = layer_inputs(model, names, batches)
    for name in names:
        xs = [x / x.max().abs() for x in inputs[name]]
        expected = sum(x.t() @ x for x in xs) / len(xs)
        torch.testing.assert_close(stats[name]["covariance"], expected, rtol=1e-5, atol=1e-6)
    source = stats.info["source"]
    assert source["model.layers.0.self_attn.k_proj"] == "model.layers.0.self_attn.q_proj"
    assert source["model.layers.0.mlp.up_proj"] == "model.layers.0.mlp.gate_proj"
    assert source["model.layers.0.self_attn.o_proj"] == "model.layers.0.self_attn.o_proj"


def test_a_small_memory_budget_streams_layer_groups_with_the_same_result():
    model = tiny_llama()
    names = targets(model)
    batches = padded_batches()
    whole = collect(model, Request(Covariance(), names, CalibrationData()), batches)
    small = CalibrationData(max_memory_mb=2 * 64 * 64 * 4 / 2**20)  # two 64x64 (or 32x32) matrices at most
    streamed = collect(model, Request(Covariance(), names, small), batches)
    assert streamed.info["passes"] > 1 and whole.info["passes"] == 1
    for name in names:
        torch.testing.assert_close(streamed[name]["covariance"], whole[name]["covariance"])
    assert Covariance().memory_bytes(model, names, int(small.max_memory_mb * 2**20)) <= 2 * 64 * 64 * 4


def test_groups_fit_the_budget_and_an_oversized_layer_gets_its_own():
    groups = groups_within({"a": 10, "b": 10, "c": 30, "d": 5}, max_bytes=10 * 10 * 4 * 2)
    assert groups == [["a", "b"], ["c"], ["d"]]


def corda_request(model, overrides: list[str]) -> Request:
    method = build(compose(["method=corda", *overrides]).method)
    return method.calibration_request(model, target_defaults=architecture("llama").targets)


def test_a_sweep_over_ranks_and_seeds_computes_the_calibration_once():
    model = tiny_llama()
    batches = padded_batches()
    records = []
    for rank, seed in ((2, 0), (4, 1), (2, 2)):
        torch.manual_seed(seed)
        stats = calibrate(model, corda_request(model, [f"method.rank={rank}", "method.calibration.num_samples=9"]),
                          batches, say=lambda line: None)
        records.append(stats.record)
    assert [r["computed"] for r in records] == [True, False, False]
    assert len({r["key"] for r in records}) == 1
    other = calibrate(model, corda_request(model, ["method.calibration.num_samples=8"]), batches[:2],
                      say=lambda line: None)
    assert other.record["computed"] and other.record["key"] != records[0]["key"]


def test_concurrent_runs_compute_one_entry():
    model = tiny_llama(seed=5)
    batches = padded_batches(seed=5)
    request = corda_request(model, [])
    records = []
    threads = [threading.Thread(target=lambda: records.append(
        calibrate(model, request, batches, say=lambda line: None).record)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r["computed"] for r in records) == [False, True]


def test_label_mask_leaves_prompt_positions_out_only_with_per_token_labels():
    from peftlab.calibration.hooks import token_mask

    b = padded_batches(1)[0]
    assert torch.equal(token_mask(b, label_mask=True), b["attention_mask"].bool() & (b["labels"] != -100))
    assert torch.equal(token_mask(b, label_mask=False), b["attention_mask"].bool())
    classification = {**b, "labels": torch.zeros(b["input_ids"].shape[0], dtype=torch.long)}
    assert torch.equal(token_mask(classification, label_mask=True), b["attention_mask"].bool())


def test_calibration_data_from_another_dataset_option_and_bad_choices():
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer

    from peftlab.calibration.data import calibration_batches, chosen
    from peftlab.models import resolve_source

    tokenizer = AutoTokenizer.from_pretrained(resolve_source("package:peftlab/assets/tiny_lm"))
    cfg = OmegaConf.create({"seed": 0, "dataset": {"_target_": "x"}})
    data = CalibrationData(dataset="stdlib_docs", num_samples=5, batch_size=2)
    batches = calibration_batches(data, cfg=cfg, task=None, tokenizer=tokenizer, max_length=32)
    assert [b["input_ids"].shape[0] for b in batches] == [2, 2, 1]
    assert all(b["input_ids"].shape == b["attention_mask"].shape for b in batches)
    again = calibration_batches(data, cfg=OmegaConf.create({"seed": 7, "dataset": {}}), task=None,
                                tokenizer=tokenizer, max_length=32)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches, again))  # same for any seed
    with pytest.raises(UserError, match="method.calibration.dataset=nope"):
        calibration_batches(CalibrationData(dataset="nope"), cfg=cfg, task=None, tokenizer=tokenizer, max_length=32)
    with pytest.raises(UserError, match="method.calibration.split=dev"):
        calibration_batches(CalibrationData(dataset="arith", split="dev"), cfg=cfg, task=None, tokenizer=tokenizer,
                            max_length=32)
    import datasets

    with pytest.raises(UserError, match="no examples"):
        chosen(datasets.Dataset.from_dict({"text": []}), CalibrationData(), "'empty'")


@pytest.mark.parametrize("value, needle", [({"num_samples": 0}, "num_samples=0"), ({"sizes": 3}, "sizes"),
                                           ({"max_memory_mb": -1}, "max_memory_mb=-1")])
def test_bad_calibration_options_are_user_errors(value, needle):
    with pytest.raises(UserError, match=needle):
        CalibrationData.from_option(value)


def test_the_model_is_left_in_its_mode():
    model = tiny_bert().train()
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "attention" in n]
    collect(model, Request(Covariance(), names, CalibrationData()), padded_batches())
    assert model.training


@pytest.mark.slow
def test_runs_of_a_sweep_read_the_calibration_their_first_member_computed():
    from peftlab.experiment import build_experiment

    common = ["model=tiny", "method.calibration.num_samples=12", "method.calibration.batch_size=6"]
    records = [build_experiment(compose([*common, "method=corda", f"method.rank={rank}"]), with_data=False)
               .calibration.record for rank in (4, 8)]
    assert [r["computed"] for r in records] == [True, False]
    lr = [build_experiment(compose([*common, "method=eva", "method.tau=0.9", f"optimizer.lr={value}"]),
                           with_data=False).calibration.record for value in (1e-3, 2e-3)]
    assert [r["computed"] for r in lr] == [True, False]
    lora = build_experiment(compose(["model=tiny", "method=lora"]), with_data=False)
    assert lora.calibration is None


@pytest.mark.slow
def test_dry_run_reports_the_calibration_memory():
    from tests.conftest import peftlab

    result = peftlab("train", "model=tiny", "method=corda", "method.calibration.num_samples=8", "--dry-run",
                     env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "calibration pass before training holds at most" in " ".join(result.stdout.split())
