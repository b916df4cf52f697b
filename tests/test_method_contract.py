"""The adapter contract, checked for every method YAML in configs/method/.

A new method is covered by adding its YAML: each test is parametrised over the
files found there. The model is a tiny random BERT classifier; targets are the
architecture defaults (query, key, value, output.dense, intermediate.dense).
"""

from __future__ import annotations

import copy

import pytest
import torch

from peftlab.config import build, compose, config_dir
from peftlab.methods.base import adapted_layers, merge, trainable_parameters, unmerge
from peftlab.models import architecture

METHODS = sorted(p.stem for p in (config_dir() / "method").glob("*.yaml"))


def tiny_bert(seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, num_labels=3,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(config).eval()


def batch(seed: int = 1, n: int = 4, length: int = 12):
    g = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(1, 120, (n, length), generator=g),
        "attention_mask": torch.ones(n, length, dtype=torch.long),
        "labels": torch.randint(0, 3, (n,), generator=g),
    }


def adapt(name: str, model, seed: int = 0):
    cfg = compose([f"method={name}"])
    method = build(cfg.method)
    arch = architecture("bert")
    torch.manual_seed(seed)
    method.prepare(model, target_defaults=arch.targets, head_modules=arch.heads)
    return method


def train_steps(model, method, steps: int = 3, lr: float = 1e-2):
    model.train()
    opt = torch.optim.AdamW(list(trainable_parameters(model).values()), lr=lr)
    for step in range(steps):
        out = model(**batch(seed=10 + step))
        loss = out.loss + sum(method.loss_terms(model).values(), torch.zeros(()))
        loss.backward()
        method.on_after_backward(model, step)
        method.on_before_optimizer_step(model, step, lr)
        opt.step()
        method.on_after_optimizer_step(model, step, steps)
        opt.zero_grad()
    model.eval()


def perturb(model, scale: float = 0.05, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in trainable_parameters(model).values():
            p.add_(torch.randn(p.shape, generator=g) * scale)


@pytest.mark.parametrize("name", METHODS)
def test_output_unchanged_at_init(name):
    base = tiny_bert()
    reference = base(**batch()).logits
    model = copy.deepcopy(base)
    adapt(name, model)
    torch.testing.assert_close(model(**batch()).logits, reference, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("name", METHODS)
def test_merge_equals_unmerged_forward_and_unmerge_restores(name):
    model = tiny_bert()
    adapt(name, model)
    perturb(model)
    layers = adapted_layers(model)
    before = {n: layer.base.weight.detach().clone() for n, layer in layers.items()}
    unmerged = model(**batch()).logits
    merge(model)
    torch.testing.assert_close(model(**batch()).logits, unmerged, atol=1e-4, rtol=1e-3)
    unmerge(model)
    for n, layer in layers.items():
        torch.testing.assert_close(layer.base.weight, before[n], atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(model(**batch()).logits, unmerged, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("name", METHODS)
def test_only_trainable_parameters_change(name):
    model = tiny_bert()
    method = adapt(name, model)
    trainable = set(trainable_parameters(model))
    assert trainable, "a method must leave something trainable"
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    train_steps(model, method)
    after = model.state_dict()
    changed = {k for k in state if not torch.equal(state[k], after[k])}
    assert changed <= trainable, f"frozen tensors changed: {sorted(changed - trainable)[:5]}"
    assert changed == trainable, f"trainable tensors that did not move: {sorted(trainable - changed)[:5]}"


@pytest.mark.parametrize("name", METHODS)
def test_reference_is_the_pretrained_function_after_training(name):
    base = tiny_bert()
    reference = base(**batch()).logits
    model = copy.deepcopy(base)
    method = adapt(name, model)
    train_steps(model, method)
    trained = model(**batch()).logits
    assert not torch.allclose(trained, reference, atol=1e-4)
    with method.reference(model):
        torch.testing.assert_close(model(**batch()).logits, reference, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(model(**batch()).logits, trained)


@pytest.mark.parametrize("name", METHODS)
def test_save_and_reload_give_identical_outputs(name, tmp_path):
    from safetensors.torch import load_file, save_file

    model = tiny_bert()
    method = adapt(name, model)
    train_steps(model, method)
    expected = model(**batch()).logits
    save_file({k: v.detach().contiguous() for k, v in trainable_parameters(model).items()}, str(tmp_path / "a.safetensors"))
    fresh = tiny_bert()
    adapt(name, fresh, seed=123)  # a different adapter init: everything trained must come from the file
    missing, unexpected = fresh.load_state_dict(load_file(str(tmp_path / "a.safetensors")), strict=False)
    assert not unexpected
    torch.testing.assert_close(fresh(**batch()).logits, expected, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_forward_is_finite(name, dtype):
    model = tiny_bert()
    adapt(name, model)
    perturb(model, scale=0.01)
    model.to(dtype)
    logits = model(**batch()).logits
    assert logits.dtype == dtype
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", METHODS)
def test_trainable_counts_follow_the_formulas(name):
    model = tiny_bert()
    adapt(name, model)
    layers = adapted_layers(model)
    for layer_name, layer in layers.items():
        real = sum(p.numel() for p in layer.adapter.parameters() if p.requires_grad)
        assert real == layer.adapter.expected_trainable(), layer_name
    if layers:  # adapters only: the head is the only other trainable part
        outside = {n for n in trainable_parameters(model) if not any(n.startswith(l + ".") for l in layers)}
        assert all(n.startswith("classifier.") for n in outside), sorted(outside)
