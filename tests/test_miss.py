"""MiSS / Bone: the three modes against their equations and against Hugging Face PEFT's MiSS."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from peftlab.errors import UserError
from peftlab.methods.base import AdaptedLinear, adapted_layers, trainable_parameters
from peftlab.methods.miss import MiSS, MiSSAdapter
from tests.test_lora_parity import adamw_steps
from tests.test_method_contract import batch, tiny_bert

peft = pytest.importorskip("peft")

TARGETS = ["query", "value", "intermediate.dense", "output.dense"]  # 32x32, 64x32 and 32x64 layers
PEFT_MODES = {"miss": True, "mini": "mini", "bat": "bat"}


def adapted_linear(m: int, n: int, rank: int, mode: str, mini_rank: int = 1, seed: int = 0):
    torch.manual_seed(seed)
    layer = nn.Linear(n, m)
    adapter = MiSSAdapter(n, m, rank, mode, mini_rank)
    adapter.initialize(layer.weight.detach())
    with torch.no_grad():
        adapter.miss_block.normal_(0, 0.3)
    return AdaptedLinear(layer, adapter)


def reference_delta_miss(block: torch.Tensor, m: int, n: int) -> torch.Tensor:
    """dW[:, j] = D[j mod r, :] for every input column j (the last partial block uses D's first rows)."""
    r = block.shape[0]
    delta = torch.zeros(m, n)
    for j in range(n):
        delta[:, j] = block[j % r]
    return delta


@pytest.mark.parametrize("m,n,rank", [(6, 12, 4), (5, 10, 4), (8, 7, 3)])
def test_miss_weight_change_and_forward_follow_the_tiling(m, n, rank):
    layer = adapted_linear(m, n, rank, "miss")
    delta = reference_delta_miss(layer.adapter.miss_block.detach(), m, n)
    torch.testing.assert_close(layer.adapter.delta_weight(), delta)
    x = torch.randn(3, 2, n)
    expected = x @ (layer.base.weight + delta).T + layer.base.bias
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


def test_mini_repeats_its_block_along_the_outputs():
    layer = adapted_linear(6, 8, 4, "mini", mini_rank=2)
    block = layer.adapter.miss_block.detach()
    assert block.shape == (4, 2)
    full = torch.cat([block] * 3, dim=1)  # r x m: columns (mini_r blocks) repeated m / mini_r times
    torch.testing.assert_close(layer.adapter.delta_weight(), reference_delta_miss(full, 6, 8))
    assert layer.adapter.expected_trainable() == 4 * 2


def test_bat_is_a_block_affine_map_of_each_row_block():
    m, n, r = 6, 9, 3
    layer = adapted_linear(m, n, r, "bat")
    w, b = layer.base.weight.detach(), layer.adapter.miss_block.detach()
    expected = w.clone()
    for i in range(m // r):
        for j in range(n // r):
            block = w[i * r:(i + 1) * r, j * r:(j + 1) * r]
            expected[i * r:(i + 1) * r, j * r:(j + 1) * r] = block + block @ b[i] + b[i]
    torch.testing.assert_close(layer.adapter.merged_weight(w), expected, atol=1e-6, rtol=1e-6)
    x = torch.randn(4, n)
    torch.testing.assert_close(layer(x), x @ expected.T + layer.base.bias, atol=1e-5, rtol=1e-5)
    layer.merge()
    torch.testing.assert_close(layer.base.weight, expected, atol=1e-6, rtol=1e-6)
    layer.unmerge()
    torch.testing.assert_close(layer.base.weight, w, atol=1e-5, rtol=1e-5)


def test_bat_gradient_reaches_the_block_through_w():
    layer = adapted_linear(4, 4, 2, "bat")
    x = torch.randn(5, 4)
    layer(x).sum().backward()
    b = layer.adapter.miss_block.detach().clone().requires_grad_(True)
    w = layer.base.weight.detach()
    blocks = [[w[i * 2:(i + 1) * 2, j * 2:(j + 1) * 2] for j in range(2)] for i in range(2)]
    full = torch.cat([torch.cat([blk + blk @ b[i] + b[i] for blk in row], dim=1) for i, row in enumerate(blocks)])
    (x @ full.T + layer.base.bias).sum().backward()
    torch.testing.assert_close(layer.adapter.miss_block.grad, b.grad)


def peft_and_ours(mode: str, rank: int, mini_rank: int = 1):
    base = tiny_bert()
    config = peft.MissConfig(r=rank, init_weights=PEFT_MODES[mode], mini_r=mini_rank, target_modules=TARGETS,
                             modules_to_save=["classifier"])
    peft_model = peft.get_peft_model(copy.deepcopy(base), config)
    ours = copy.deepcopy(base)
    MiSS(rank=rank, mode=mode, mini_rank=mini_rank, target_modules=TARGETS).prepare(
        ours, target_defaults=[], head_modules=["classifier"])
    peft_params = dict(peft_model.named_parameters())
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, layer in adapted_layers(ours).items():
            theirs = peft_params[f"base_model.model.{name}.miss_block.default"]
            assert theirs.shape == layer.adapter.miss_block.shape
            theirs.copy_(torch.randn(theirs.shape, generator=g) * 0.1)
            layer.adapter.miss_block.copy_(theirs)
    return peft_model, ours


@pytest.mark.parametrize("mode,rank,mini_rank", [("miss", 8, 1), ("miss", 12, 1), ("mini", 8, 4), ("bat", 8, 1)])
def test_miss_matches_peft_forward_merge_and_training(mode, rank, mini_rank):
    peft_model, ours = peft_and_ours(mode, rank, mini_rank)
    n_peft = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert sum(p.numel() for p in trainable_parameters(ours).values()) == n_peft
    torch.testing.assert_close(ours(**batch()).logits, peft_model(**batch()).logits, atol=1e-5, rtol=1e-4)
    name = "bert.encoder.layer.1.output.dense"  # 32 x 64
    peft_layer = peft_model.base_model.model.get_submodule(name)
    ours_layer = adapted_layers(ours)[name]
    expected = ours_layer.adapter.merged_weight(ours_layer.base.weight.detach())
    peft_layer.merge()
    torch.testing.assert_close(peft_layer.get_base_layer().weight, expected, atol=1e-5, rtol=1e-5)
    peft_layer.unmerge()
    adamw_steps(peft_model)
    adamw_steps(ours)
    torch.testing.assert_close(ours(**batch()).logits, peft_model(**batch()).logits, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("options,match", [
    ({"mode": "bone"}, "method.mode=bone"),
    ({"mode": "bat", "dropout": 0.1}, "method.dropout=0.1"),
    ({"rank": 0}, "method.rank=0"),
    ({"mini_rank": 0, "mode": "mini"}, "method.mini_rank=0"),
])
def test_bad_options_are_refused_early(options, match):
    with pytest.raises(UserError, match=match):
        MiSS(**options)


@pytest.mark.parametrize("options,match", [
    ({"rank": 48}, "method.rank=48 is larger than the input size"),
    ({"rank": 12, "mode": "bat"}, "method.rank=12 does not divide"),
    ({"rank": 4, "mode": "mini", "mini_rank": 5}, "method.mini_rank=5 does not divide"),
])
def test_options_that_do_not_fit_a_layer_are_refused(options, match):
    with pytest.raises(UserError, match=match):
        MiSS(target_modules=["query"], **options).prepare(tiny_bert(), target_defaults=[], head_modules=[])
