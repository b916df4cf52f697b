"""The adapter contract, checked for every method YAML in configs/method/.

A new method is covered by adding its YAML: each test is parametrised over the
files found there. The models are a tiny random BERT classifier and a tiny random Llama causal LM;
targets are the architecture defaults (query/key/value/output.dense/
intermediate.dense; q/k/v/o and gate/up/down projections).
"""

from __future__ import annotations

import copy

import pytest
import torch

from peftlab.config import build, compose, config_dir
from peftlab.methods.base import adapted_layers, merge, trainable_parameters, unmerge
from peftlab.models import architecture

METHODS = sorted(p.stem for p in (config_dir() / "method").glob("*.yaml"))
KINDS = ("classifier", "causal_lm")


def tiny_bert(seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, num_labels=3,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(config).eval()


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def tiny(kind: str, seed: int = 0):
    return tiny_bert(seed) if kind == "classifier" else tiny_llama(seed)


def batch(kind: str = "classifier", seed: int = 1, n: int = 4, length: int = 12):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 120, (n, length), generator=g)
    labels = torch.randint(0, 3, (n,), generator=g) if kind == "classifier" else ids.clone()
    return {"input_ids": ids, "attention_mask": torch.ones(n, length, dtype=torch.long), "labels": labels}


def calibration_batches(kind: str) -> list[dict]:
    """What a data-driven method calibrates on here: random batches (the run's data in a real run)."""
    return [batch(kind, seed=100 + i, n=8) for i in range(8)]


def calibration_for(method, model, targets):
    """The statistics a method asks for (none for most), through the shared pass and its on-disk cache
    (the session's temporary cache folder), so each model and method computes them once."""
    from peftlab.calibration.run import calibrate

    request = method.calibration_request(model, target_defaults=targets)
    if request is None:
        return None
    return calibrate(model, request, calibration_batches(kind_of(model)), say=lambda line: None)


def adapt(name: str, model, seed: int = 0):
    cfg = compose([f"method={name}"])
    method = build(cfg.method)
    kind = "bert" if model.config.model_type == "bert" else "llama"
    arch = architecture(kind)
    calibration = calibration_for(method, model, arch.targets)
    torch.manual_seed(seed)
    heads = arch.heads if kind == "bert" else ()  # a causal LM keeps its output layer frozen
    method.prepare(model, target_defaults=arch.targets, head_modules=heads, calibration=calibration)
    return method


def kind_of(model) -> str:
    return "classifier" if model.config.model_type == "bert" else "causal_lm"


def train_steps(model, method, steps: int = 3, lr: float = 1e-2):
    model.train()
    opt = torch.optim.AdamW(list(trainable_parameters(model).values()), lr=lr)
    method.on_train_begin(model, optimizer=opt)  # as the training loop does
    for step in range(steps):
        out = model(**batch(kind_of(model), seed=10 + step))
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


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", METHODS)
def test_output_unchanged_at_init(name, kind):
    base = tiny(kind)
    reference = base(**batch(kind)).logits
    model = copy.deepcopy(base)
    adapt(name, model)
    torch.testing.assert_close(model(**batch(kind)).logits, reference, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", METHODS)
def test_merge_equals_unmerged_forward_and_unmerge_restores(name, kind):
    model = tiny(kind)
    adapt(name, model)
    perturb(model)
    layers = adapted_layers(model)
    before = {n: layer.base.weight.detach().clone() for n, layer in layers.items()}
    unmerged = model(**batch(kind)).logits
    merge(model)
    torch.testing.assert_close(model(**batch(kind)).logits, unmerged, atol=1e-4, rtol=1e-3)
    unmerge(model)
    for n, layer in layers.items():
        torch.testing.assert_close(layer.base.weight, before[n], atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(model(**batch(kind)).logits, unmerged, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", METHODS)
def test_only_trainable_parameters_change(name, kind):
    model = tiny(kind)
    method = adapt(name, model)
    trainable = set(trainable_parameters(model))
    assert trainable, "a method must leave something trainable"
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    train_steps(model, method)
    after = model.state_dict()
    changed = {k for k in state if not torch.equal(state[k], after[k])}
    assert changed <= trainable, f"frozen tensors changed: {sorted(changed - trainable)[:5]}"
    if method.holds_parameters_still:  # e.g. half of the parameters frozen per round
        assert changed, "nothing trained"
    else:
        assert changed == trainable, f"trainable tensors that did not move: {sorted(trainable - changed)[:5]}"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", METHODS)
def test_reference_is_the_pretrained_function_after_training(name, kind):
    base = tiny(kind)
    reference = base(**batch(kind)).logits
    model = copy.deepcopy(base)
    method = adapt(name, model)
    train_steps(model, method)
    trained = model(**batch(kind)).logits
    assert not torch.allclose(trained, reference, atol=1e-4)
    with method.reference(model):
        torch.testing.assert_close(model(**batch(kind)).logits, reference, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(model(**batch(kind)).logits, trained)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", METHODS)
def test_save_and_reload_give_identical_outputs(name, kind, tmp_path):
    from safetensors.torch import load_file, save_file

    model = tiny(kind)
    method = adapt(name, model)
    train_steps(model, method)
    expected = model(**batch(kind)).logits
    save_file({k: v.detach().contiguous() for k, v in trainable_parameters(model).items()}, str(tmp_path / "a.safetensors"))
    fresh = tiny(kind)
    adapt(name, fresh, seed=123)  # a different adapter init: everything trained must come from the file
    missing, unexpected = fresh.load_state_dict(load_file(str(tmp_path / "a.safetensors")), strict=False)
    assert not unexpected
    torch.testing.assert_close(fresh(**batch(kind)).logits, expected, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_forward_is_finite(name, kind, dtype):
    model = tiny(kind)
    adapt(name, model)
    perturb(model, scale=0.01)
    model.to(dtype)
    logits = model(**batch(kind)).logits
    assert logits.dtype == dtype
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", METHODS)
def test_trainable_counts_follow_the_formulas(name, kind):
    model = tiny(kind)
    adapt(name, model)
    layers = adapted_layers(model)
    for layer_name, layer in layers.items():
        real = sum(p.numel() for p in layer.adapter.parameters() if p.requires_grad)
        assert real == layer.adapter.expected_trainable(), layer_name
    if layers:  # adapters only: the classifier's head is the only other trainable part; an LM has none
        outside = {n for n in trainable_parameters(model) if not any(n.startswith(l + ".") for l in layers)}
        allowed = ("classifier.",) if kind == "classifier" else ()
        assert all(n.startswith(allowed) for n in outside) if allowed else not outside, sorted(outside)
