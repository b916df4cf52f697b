"""The PEFT export of MiSS (all modes) and RandLoRA: PEFT's own MiSS / RandLoRA adapter, which
PEFT loads on the original model and which reproduces the adapted model's outputs.

The CLI path (`peftlab export RUN --format peft`) is exercised for every method by
tests/test_export.py; here the same export function runs in-process on a tiny BERT, so the
modes and options that the shipped YAMLs do not use are covered too. With ``--rank`` the
same runs still export as a LoRA of the weight change, exact at its numerical rank. The last
test covers the LoRA form's rsLoRA and per-layer rank fields, which the default YAMLs do not reach.
"""

from __future__ import annotations

import copy
import json
import warnings
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from peftlab.export import PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE, peft_export
from peftlab.methods.base import adapted_layers
from peftlab.methods.miss import MiSS
from peftlab.methods.randlora import RandLoRA
from tests.test_method_contract import batch, tiny_bert, train_steps

peft = pytest.importorskip("peft")

TARGETS = ["query", "value", "intermediate.dense", "output.dense"]  # 32x32, 64x32 and 32x64 layers
METHODS = {
    "miss": lambda: MiSS(rank=8, target_modules=TARGETS),
    "miss-partial": lambda: MiSS(rank=12, dropout=0.1, target_modules=TARGETS),  # 12 does not divide 32 or 64
    "miss-mini": lambda: MiSS(rank=8, mode="mini", mini_rank=4, target_modules=TARGETS),
    "miss-bat": lambda: MiSS(rank=8, mode="bat", target_modules=TARGETS),
    "randlora": lambda: RandLoRA(rank=8, alpha=16, basis_seed=3, target_modules=TARGETS),
    "randlora-sparse": lambda: RandLoRA(rank=12, alpha=6, bases="sparse", dropout=0.1, target_modules=TARGETS),
}
# The adapter_config.json fields each run must give PEFT (besides target_modules and modules_to_save).
EXPECTED = {
    "miss": {"peft_type": "MISS", "r": 8, "init_weights": True, "miss_dropout": 0.0},
    "miss-partial": {"peft_type": "MISS", "r": 12, "init_weights": True, "miss_dropout": 0.1},
    "miss-mini": {"peft_type": "MISS", "r": 8, "init_weights": "mini", "mini_r": 4},
    "miss-bat": {"peft_type": "MISS", "r": 8, "init_weights": "bat"},
    "randlora": {"peft_type": "RANDLORA", "r": 8, "randlora_alpha": 16, "projection_prng_key": 3,
                 "save_projection": True, "sparse": False, "very_sparse": False},
    "randlora-sparse": {"peft_type": "RANDLORA", "r": 12, "randlora_alpha": 6, "projection_prng_key": 0,
                        "sparse": True, "very_sparse": False, "randlora_dropout": 0.1},
}


def trained(name: str):
    """(original base, adapted model trained a few steps, method, logits of the adapted model)."""
    base = tiny_bert()
    model = copy.deepcopy(base)
    method = METHODS[name]()
    method.prepare(model, target_defaults=[], head_modules=["classifier"])
    train_steps(model, method, steps=3, lr=2e-2)
    with torch.no_grad():
        expected = model(**batch()).logits
        with method.reference(model):
            pretrained = model(**batch()).logits
    assert (expected - pretrained).abs().max() > 1e-2  # training moved the outputs
    return base, model, method, expected


def export(model, method, folder, rank=None):
    exp = SimpleNamespace(model=model, method=method, cfg=OmegaConf.create({}),
                          loaded=SimpleNamespace(head_modules=["classifier"], source="tiny-bert"),
                          task=SimpleNamespace(peft_task_type="SEQ_CLS"))
    tensors, config, report = peft_export(exp, rank)
    folder.mkdir()
    save_file(tensors, str(folder / PEFT_WEIGHTS_FILE))
    (folder / PEFT_CONFIG_FILE).write_text(json.dumps(config))
    return config, report


def peft_logits(base, folder):
    """Logits of the export loaded by PEFT, which must find every key it expects and no other."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(folder)).eval()
    assert not [str(w.message) for w in caught if "keys" in str(w.message)]
    with torch.no_grad():
        return loaded(**batch()).logits, loaded


@pytest.mark.parametrize("name", sorted(METHODS))
def test_peft_loads_the_native_export_and_reproduces_the_outputs(name, tmp_path):
    base, model, method, expected = trained(name)
    config, report = export(model, method, tmp_path / "native")
    kind = EXPECTED[name]["peft_type"].lower()
    assert report["path"] == f"native-{kind}" and report["exact"] and report["max_relative_error"] == 0.0
    assert {k: config[k] for k in EXPECTED[name]} == EXPECTED[name]
    assert config["target_modules"] == sorted(adapted_layers(model)) and config["modules_to_save"] == ["classifier"]
    got, loaded = peft_logits(base, tmp_path / "native")
    assert type(loaded.peft_config["default"]).__name__ == {"miss": "MissConfig", "randlora": "RandLoraConfig"}[kind]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # --rank still writes a LoRA of the weight change, exact at the change's numerical rank
    config, report = export(model, method, tmp_path / "factorized", rank=64)
    assert config["peft_type"] == "LORA" and report["path"] == "factorized" and report["exact"]
    torch.testing.assert_close(peft_logits(base, tmp_path / "factorized")[0], expected, atol=1e-4, rtol=1e-4)


def test_randlora_writes_its_bases_where_peft_saves_them_and_they_win_over_the_seed(tmp_path):
    """PEFT saves the shared bases under base_model.randlora_A/B and once more per layer; the load
    must use the written bases even where regenerating them from the seed would give others."""
    base, model, method, expected = trained("randlora")
    config, _ = export(model, method, tmp_path / "out")
    tensors = load_file(str(tmp_path / "out" / PEFT_WEIGHTS_FILE))
    shared = method.shared
    torch.testing.assert_close(tensors["base_model.randlora_A"], shared.A, atol=0, rtol=0)
    torch.testing.assert_close(tensors["base_model.randlora_B"], shared.B, atol=0, rtol=0)
    for name, layer in adapted_layers(model).items():
        prefix = f"base_model.model.{name}."
        torch.testing.assert_close(tensors[prefix + "randlora_A"], shared.A, atol=0, rtol=0)
        torch.testing.assert_close(tensors[prefix + "randlora_lambda"], layer.adapter.randlora_lambda.detach())
    config["projection_prng_key"] = 99  # other bases if PEFT regenerated them
    (tmp_path / "out" / PEFT_CONFIG_FILE).write_text(json.dumps(config))
    torch.testing.assert_close(peft_logits(base, tmp_path / "out")[0], expected, atol=1e-5, rtol=1e-5)


def test_an_adapter_whose_function_peft_would_not_reproduce_falls_back_to_factorized(tmp_path):
    """The numerical check, not the form alone, decides: a MiSS adapter whose change is 1.5 times
    its block's (as an undeclared subclass might make it) keeps its PEFT form, which PEFT would
    load as the plain block, so it is exported as a LoRA of its weight change instead."""
    base, model, method, _ = trained("miss")
    adapter = next(iter(adapted_layers(model).values())).adapter
    plain = adapter.delta_forward
    adapter.delta_forward = lambda x: 1.5 * plain(x)
    adapter.merged_weight = lambda w: w + 1.5 * adapter.delta_weight().to(w.dtype)
    with torch.no_grad():
        expected = model(**batch()).logits
    assert adapter.peft_native() is not None
    config, report = export(model, method, tmp_path / "out")
    assert report["path"] == "factorized" and config["peft_type"] == "LORA"
    torch.testing.assert_close(peft_logits(base, tmp_path / "out")[0], expected, atol=1e-4, rtol=1e-4)


def test_lora_native_form_keeps_rslora_and_gives_other_ranks_a_pattern(tmp_path):
    """rsLoRA is written as use_rslora with the run's alpha; a layer of another rank and scale goes
    into PEFT's rank_pattern / alpha_pattern (alpha = scale x rank there, with PEFT's rsLoRA rule)."""
    from peftlab.methods.lora import LoRA, LoRAAdapter

    base = tiny_bert()
    model = copy.deepcopy(base)
    method = LoRA(rank=4, alpha=8, rslora=True, target_modules=TARGETS)
    method.prepare(model, target_defaults=[], head_modules=["classifier"])
    odd = "bert.encoder.layer.1.attention.self.value"
    layer = adapted_layers(model)[odd]
    layer.adapter = LoRAAdapter(32, 32, rank=2, scale=3.0)
    layer.adapter.alpha, layer.adapter.rslora = 3.0 * 2 ** 0.5, True
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for adapted in adapted_layers(model).values():
            for p in (adapted.adapter.lora_A, adapted.adapter.lora_B):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        expected = model(**batch()).logits
        assert (expected - base(**batch()).logits).abs().max() > 1e-2
    config, report = export(model, method, tmp_path / "out")
    assert report["path"] == "native-lora" and config["use_rslora"] is True
    assert (config["r"], config["lora_alpha"]) == (4, 8) and config["rank_pattern"] == {odd: 2}
    assert config["alpha_pattern"] == {odd: pytest.approx(3.0 * 2 ** 0.5)}
    torch.testing.assert_close(peft_logits(base, tmp_path / "out")[0], expected, atol=1e-5, rtol=1e-5)
