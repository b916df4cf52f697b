"""EVA and CorDA: spec tests against the equations computed here, and parity with PEFT."""

from __future__ import annotations

import copy

import pytest
import torch

from peftlab.calibration.explained_variance import redistribute
from peftlab.calibration.run import collect
from peftlab.config import build, compose
from peftlab.methods.base import adapted_layers
from peftlab.models import architecture
from tests.test_calibration import padded_batches
from tests.test_method_contract import tiny_llama

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def method_of(name: str, *overrides: str):
    return build(compose([f"method={name}", *overrides]).method)


def prepared(model, name: str, batches, *overrides: str):
    method = method_of(name, *overrides)
    request = method.calibration_request(model, target_defaults=architecture("llama").targets)
    stats = collect(model, request, batches)
    method.prepare(model, target_defaults=architecture("llama").targets, calibration=stats)
    return method, stats


# --------------------------------------------------------------------------- CorDA


@pytest.mark.parametrize("mode", ["ipa", "kpa"])
def test_corda_factors_are_the_chosen_triplets_of_w_times_the_damped_covariance(mode):
    torch.manual_seed(0)
    m, n, r, alpha = 6, 5, 2, 4.0
    weight = torch.randn(m, n)
    x = torch.randn(3, n)
    cov = x.t() @ x / 3  # rank 3 < n: needs damping
    from peftlab.methods.corda import CorDAAdapter

    adapter = CorDAAdapter(n, m, r, alpha / r, mode=mode)
    residual = adapter.initialize(weight, {"covariance": cov})
    d = 0.01
    while True:  # the damping rule, independently
        fixed = cov + d * cov.diag().mean() * torch.eye(n)
        inv = torch.linalg.inv(fixed)
        if torch.dist(fixed @ inv, torch.eye(n)) < 0.05:
            break
        d *= 2
    U, S, Vh = torch.linalg.svd(weight @ fixed, full_matrices=False)
    V = (Vh @ inv).t()
    keep = slice(0, r) if mode == "ipa" else slice(n - r, n)
    expected_part = U[:, keep] @ torch.diag(S[keep]) @ V[:, keep].t()
    torch.testing.assert_close(adapter.scale * adapter.lora_B @ adapter.lora_A, expected_part, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(residual + adapter.delta_weight(), weight, atol=1e-5, rtol=1e-4)


def test_corda_reproduces_the_pretrained_outputs_and_kpa_differs_from_ipa():
    base = tiny_llama()
    batch = padded_batches(1)[0]
    reference = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    factors = {}
    for mode in ("ipa", "kpa"):
        model = copy.deepcopy(base)
        prepared(model, "corda", padded_batches(), f"method.mode={mode}", "method.rank=4")
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-4)
        factors[mode] = adapted_layers(model)["model.layers.0.self_attn.q_proj"].adapter.lora_B.detach()
    assert not torch.allclose(factors["ipa"], factors["kpa"])


def _attrs_or_stand_in(monkeypatch) -> None:
    """PEFT's corda module imports ``attr.dataclass`` (the attrs package) for one plain record class;
    where attrs is not installed, the standard library's dataclass stands in for it."""
    import dataclasses
    import importlib.util
    import sys
    import types

    if importlib.util.find_spec("attr") is None:
        monkeypatch.setitem(sys.modules, "attr", types.SimpleNamespace(dataclass=dataclasses.dataclass))
        monkeypatch.delitem(sys.modules, "peft.tuners.lora.corda", raising=False)


@pytest.mark.parametrize("mode, peft_mode", [("ipa", "ipm"), ("kpa", "kpm")])
def test_corda_matches_peft_on_the_same_covariance(mode, peft_mode, monkeypatch):
    _attrs_or_stand_in(monkeypatch)
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora.config import CordaConfig
    from peft.tuners.lora.corda import preprocess_corda

    g = torch.Generator().manual_seed(3)
    batches = [{"input_ids": torch.randint(1, 120, (1, 12), generator=g),
                "attention_mask": torch.ones(1, 12, dtype=torch.long)} for _ in range(6)]  # one example each, as PEFT
    ours = tiny_llama()
    theirs = copy.deepcopy(ours)
    prepared(ours, "corda", batches, f"method.mode={mode}", "method.rank=4", "method.alpha=8")
    config = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights="corda",
                        corda_config=CordaConfig(corda_method=peft_mode))
    preprocess_corda(theirs, config, run_model=lambda: [theirs(**b) for b in batches])
    theirs = get_peft_model(theirs, config)
    peft_layers = {n.replace("base_model.model.", ""): m for n, m in theirs.named_modules() if hasattr(m, "lora_A")}
    for name, layer in adapted_layers(ours).items():
        other = peft_layers[name]
        A, B = layer.adapter.lora_A.detach(), layer.adapter.lora_B.detach()
        # Singular vectors are defined up to sign: PEFT has LAPACK's, IPA the Gram eigendecomposition's.
        signs = torch.sign((B * other.lora_B["default"].weight).sum(0))
        torch.testing.assert_close(A * signs[:, None], other.lora_A["default"].weight, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(B * signs, other.lora_B["default"].weight, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(layer.base.weight, other.base_layer.weight, atol=1e-5, rtol=1e-4)
        assert layer.adapter.scale == other.scaling["default"]


# --------------------------------------------------------------------------- EVA


def test_redistribution_keeps_the_largest_pooled_ratios():
    ratios = {"a": torch.tensor([0.5, 0.3, 0.01]), "b": torch.tensor([0.4, 0.02, 0.01]),
              "c": torch.tensor([0.6, 0.35, 0.2])}
    ranks = redistribute(ratios, {"a": "a", "b": "b", "c": "c"}, budget=4)
    # The four largest: c 0.6, a 0.5, b 0.4, c 0.35.
    assert ranks == {"a": 1, "b": 1, "c": 2}
    shared = redistribute({"a": ratios["a"], "c": ratios["c"]}, {"a": "a", "b": "a", "c": "c"}, budget=5)
    # b sees a's input (its ratios count twice): c 0.6, a 0.5, b 0.5, c 0.35, a|b 0.3.
    assert shared["c"] == 2 and shared["a"] + shared["b"] == 3 and shared["a"] >= shared["b"]


def test_eva_a_is_the_principal_directions_scale_is_constant_and_ranks_sum_to_the_budget():
    model = tiny_llama()
    method, stats = prepared(model, "eva", padded_batches(8), "method.rank=2", "method.alpha=4", "method.tau=0.9")
    ranks = stats.info["ranks"]
    assert sum(ranks.values()) == 2 * len(ranks)
    assert method.final_ranks(model) == ranks
    layers = adapted_layers(model)
    assert set(layers) == {n for n, r in ranks.items() if r > 0}
    for name, layer in layers.items():
        assert layer.adapter.rank == ranks[name] and layer.adapter.scale == 4 / 2
        torch.testing.assert_close(layer.adapter.lora_A, stats[name]["components"])
        gram = layer.adapter.lora_A @ layer.adapter.lora_A.t()
        torch.testing.assert_close(gram, torch.eye(ranks[name]), atol=1e-4, rtol=1e-4)  # orthonormal directions
        assert not layer.adapter.lora_B.any()


def test_eva_whitening_divides_by_the_root_singular_values():
    model = tiny_llama()
    _, stats = prepared(model, "eva", padded_batches(8), "method.rank=2", "method.tau=0.9", "method.whiten=true")
    for name, layer in adapted_layers(model).items():
        expected = stats[name]["components"] / stats[name]["singular_values"].sqrt().view(-1, 1)
        torch.testing.assert_close(layer.adapter.lora_A, expected)


def test_eva_rho_one_keeps_every_layer_at_the_rank():
    model = tiny_llama()
    _, stats = prepared(model, "eva", padded_batches(8), "method.rank=2", "method.tau=0.9", "method.rho=1")
    assert set(stats.info["ranks"].values()) == {2}


def test_eva_matches_peft_on_the_same_batches():
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora.config import EvaConfig
    from peft.tuners.lora.eva import get_eva_state_dict, initialize_lora_eva_weights

    batches = padded_batches(8)
    ours = tiny_llama()
    theirs = copy.deepcopy(ours)
    _, stats = prepared(ours, "eva", batches, "method.rank=2", "method.alpha=4", "method.tau=0.9")
    config = LoraConfig(r=2, lora_alpha=4, target_modules=TARGETS, init_lora_weights="eva",
                        eva_config=EvaConfig(rho=2.0, tau=0.9))
    state = get_eva_state_dict(theirs, batches, peft_config=config, show_progress_bar=False)
    assert {n: int(t.shape[0]) for n, t in state.items()} == stats.info["ranks"]
    peft_model = get_peft_model(theirs, config)
    initialize_lora_eva_weights(peft_model, dataloader=batches, show_progress_bar=False)  # PEFT's usual flow
    peft_layers = {n.replace("base_model.model.", ""): m for n, m in peft_model.named_modules()
                   if hasattr(m, "lora_A") and "default" in m.lora_A}
    ours_layers = adapted_layers(ours)
    assert set(peft_layers) == set(ours_layers)
    for name, layer in ours_layers.items():
        torch.testing.assert_close(layer.adapter.lora_A, peft_layers[name].lora_A["default"].weight)
        assert not peft_layers[name].lora_B["default"].weight.any()
        assert layer.adapter.scale == pytest.approx(peft_layers[name].scaling["default"])


def test_eva_that_does_not_converge_says_what_to_change():
    from peftlab.errors import UserError

    model = tiny_llama()
    with pytest.raises(UserError, match="method.calibration.num_samples"):
        prepared(model, "eva", padded_batches(2), "method.rank=2", "method.tau=1.0", "method.max_batches=3")


@pytest.mark.slow
def test_an_eva_run_records_its_ranks_and_its_calibration(runs_dir):
    import json

    from peftlab import runs
    from tests.conftest import peftlab

    args = ("model=tiny", "method=eva", "method.tau=0.9", "method.calibration.num_samples=32", "trainer.max_steps=2",
            "trainer.eval_every=0", "name=eva")
    result = peftlab("train", *args, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "calibration:" in result.stderr
    run = runs.resolve("eva", runs_dir)
    ranks = run.ranks  # ranks.json, through the one reader of run folders
    assert sum(ranks.values()) == 8 * len(ranks)
    assert run.summary["adapter_ranks"]["max"] == max(ranks.values())
    assert run.meta["calibration"]["computed"] is True and run.meta["calibration"]["examples"] == 32
    shown = peftlab("show", "eva").stdout
    assert "calibration" in shown and "adapter_ranks" in shown
    analyzed = peftlab("analyze", "eva", env={"OMP_NUM_THREADS": "1"})
    assert analyzed.returncode == 0, analyzed.stderr[-2000:]
    layers = json.loads(run.analysis_path.read_text())["layers"]
    assert {n: v["rank"] for n, v in layers.items()} == {n: r for n, r in ranks.items() if r > 0}
    again = peftlab("train", *args[:-1], "name=eva2", env={"OMP_NUM_THREADS": "1"})
    assert runs.resolve("eva2", runs_dir).meta["calibration"]["computed"] is False, again.stderr[-2000:]
