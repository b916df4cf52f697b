"""Adapters on a half-precision model: trainable adapter parameters stay fp32 (as PEFT keeps
them), the adapter path is computed from inputs cast to that dtype, and the layer returns the
model's dtype."""

from __future__ import annotations

import pytest
import torch

from peftlab.methods.base import adapted_layers
from peftlab.methods.lora import LoRA
from tests.test_method_contract import METHODS, adapt, batch, tiny_bert


def bf16_lora():
    model = tiny_bert().to(torch.bfloat16)
    LoRA(rank=4, alpha=8).prepare(model, target_defaults=["query", "value"], head_modules=["classifier"])
    return model


def test_lora_on_a_bf16_model_keeps_fp32_adapters_and_returns_bf16():
    model = bf16_lora()
    layers = adapted_layers(model)
    assert layers
    for layer in layers.values():
        assert layer.base.weight.dtype == torch.bfloat16
        assert {p.dtype for p in layer.adapter.parameters()} == {torch.float32}
        x = torch.randn(2, 5, layer.in_features, dtype=torch.bfloat16)
        assert layer(x).dtype == torch.bfloat16
    logits = model(**batch()).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()


def test_a_small_update_of_a_lora_factor_is_not_lost():
    model = bf16_lora()
    adapters = [layer.adapter for layer in adapted_layers(model).values()]
    with torch.no_grad():
        for a in adapters:
            a.lora_B.normal_(std=0.5)
    model.train()
    model(**batch()).loss.backward()
    params = [p for a in adapters for p in (a.lora_A, a.lora_B)]
    assert all(p.grad.dtype == torch.float32 and p.grad.abs().sum() > 0 for p in params)
    before = [p.detach().clone() for p in params]
    for p in params:  # a step of 1e-4 on every entry
        p.grad = torch.ones_like(p)
    torch.optim.SGD(params, lr=1e-4).step()
    for p, old in zip(params, before):
        torch.testing.assert_close(p.detach(), old - 1e-4)
        assert (p.detach() != old).all()
    # The same step on bf16 copies is rounded away for most entries: what the fp32 parameters prevent.
    lost = sum(int(((old.bfloat16() - 1e-4).bfloat16() == old.bfloat16()).sum()) for old in before)
    assert lost > sum(p.numel() for p in params) // 2


@pytest.mark.parametrize("name", [m for m in METHODS if m != "full"])
def test_every_adapter_method_keeps_fp32_parameters_on_a_bf16_model(name):
    model = tiny_bert().to(torch.bfloat16)
    adapt(name, model)
    for layer in adapted_layers(model).values():
        assert {p.dtype for p in layer.adapter.parameters()} <= {torch.float32}, name
    logits = model(**batch()).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
