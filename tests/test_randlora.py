"""RandLoRA: the update against its equation, the memory-saving backward, the shared
bases regenerated from the seed, and parity with Hugging Face PEFT's RandLoRA."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from peftlab.errors import UserError
from peftlab.methods.base import adapted_layers, trainable_parameters
from peftlab.methods.randlora import RandLoRA, ScaledBasis
from tests.test_lora_parity import adamw_steps
from tests.test_method_contract import batch, tiny_bert

peft = pytest.importorskip("peft")

TARGETS = ["query", "intermediate.dense", "output.dense"]  # 32x32, 64x32 (m > n) and 32x64 (m < n)


def ours(rank=8, alpha=16.0, seed=0, bases="dense", targets=TARGETS, torch_seed=0):
    model = tiny_bert()
    torch.manual_seed(torch_seed)
    method = RandLoRA(rank=rank, alpha=alpha, basis_seed=seed, bases=bases, target_modules=targets)
    method.prepare(model, target_defaults=[], head_modules=["classifier"])
    return model, method


def perturb(model, seed=4):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in adapted_layers(model).values():
            layer.adapter.randlora_lambda.copy_(torch.randn(layer.adapter.randlora_lambda.shape, generator=g))
            layer.adapter.randlora_gamma.add_(torch.randn(layer.adapter.randlora_gamma.shape, generator=g) * 0.05)


def paper_delta(adapter) -> torch.Tensor:
    """s * sum_i B'_i diag(Lambda[:, i]) A diag(Gamma[i]) in the D x d orientation, transposed when m < n.

    B'_i is column block i of the flattened B in the order the implementation (and PEFT) pairs it:
    B'_i[:, k] = B_flat[:, k N + i], B_flat[:, i r + k] = B[:, i, k].
    """
    r, n_bases, d, big = adapter.basis_rank, adapter.count, adapter.small, adapter.large
    a = adapter.bases.A[:, 0, :d]                                   # r x d
    b_flat = adapter.bases.B[:big, :n_bases].reshape(big, n_bases * r)  # D x N r
    lam, gam = adapter.randlora_lambda.detach(), adapter.randlora_gamma.detach()
    delta = torch.zeros(big, d)
    for i in range(n_bases):
        b_i = torch.stack([b_flat[:, k * n_bases + i] for k in range(r)], dim=1)  # D x r
        delta += b_i @ torch.diag(lam[:, i]) @ a @ torch.diag(gam[i])
    delta = adapter.scale * delta
    return delta if adapter.out_features >= adapter.in_features else delta.T


def test_update_follows_the_sum_of_scaled_random_bases():
    model, _ = ours(rank=12)  # N = ceil(32/12) = 3: the last basis is partial in the paper's sense
    perturb(model)
    for name, layer in adapted_layers(model).items():
        expected = paper_delta(layer.adapter)
        torch.testing.assert_close(layer.adapter.delta_weight(), expected, atol=1e-5, rtol=1e-4, msg=name)
        x = torch.randn(3, layer.in_features)
        torch.testing.assert_close(layer(x), layer.base(x) + x @ expected.T, atol=1e-5, rtol=1e-4, msg=name)
        assert torch.linalg.matrix_rank(expected).item() == min(expected.shape)  # full rank


@pytest.mark.parametrize("grad", [True, False])
def test_a_long_input_goes_through_the_merged_weight_with_the_same_outputs_and_gradients(grad, monkeypatch):
    """Many tokens: x (W + dW)^T is cheaper than the path through the bases; it must compute the same
    outputs and gradients as the equation (dW from paper_delta, independently of the implementation)."""
    model, _ = ours(rank=12)
    perturb(model)
    for name, layer in adapted_layers(model).items():
        adapter = layer.adapter
        x = torch.randn(4, 512, layer.in_features, requires_grad=True)  # T = 2048 >> k = r N
        assert adapter.merged_is_cheaper(x, layer.base)
        assert not adapter.merged_is_cheaper(x[:1, :2], layer.base)  # 2 tokens: through the bases
        with torch.set_grad_enabled(grad):
            expected = layer.base(x) + x @ paper_delta(adapter).T
            got = layer(x)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4, msg=name)
        if grad:
            upstream = torch.randn_like(got)
            lam, gam = adapter.randlora_lambda, adapter.randlora_gamma
            grads = torch.autograd.grad(got, (x, lam, gam), upstream)
            adapter.dropout = torch.nn.Dropout(0.0)  # counts as dropout: the path through the bases
            adapter.train()
            assert not adapter.merged_is_cheaper(x, layer.base)
            want = torch.autograd.grad(layer(x), (x, lam, gam), upstream)
            for have, ref, what in zip(grads, want, ("x", "lambda", "gamma")):  # sums over 2048 tokens:
                assert (have - ref).abs().max() <= 1e-5 * ref.abs().max(), f"{name} d{what}"  # fp32 rounding
            adapter.dropout = torch.nn.Identity()


def test_counts_and_initial_values():
    model, _ = ours(rank=12)
    layer = adapted_layers(model)["bert.encoder.layer.0.intermediate.dense"].adapter  # 64 x 32
    assert layer.count == 3 and layer.randlora_lambda.shape == (12, 3) and layer.randlora_gamma.shape == (3, 32)
    assert layer.expected_trainable() == 12 * 3 + 3 * 32
    assert torch.all(layer.randlora_lambda == 0)
    torch.testing.assert_close(layer.randlora_gamma, torch.full((3, 32), 1 / 32))


def test_scaled_basis_backward_matches_autograd_and_skips_the_basis():
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(4, 1, 6, generator=g, dtype=torch.double)
    lam = torch.randn(4, 3, generator=g, dtype=torch.double, requires_grad=True)
    gam = torch.randn(3, 6, generator=g, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda l, c: ScaledBasis.apply(basis, l, c), (lam, gam))
    weights = torch.randn(4, 3, 6, generator=g, dtype=torch.double)
    (ScaledBasis.apply(basis, lam, gam) * weights).sum().backward()
    lam2, gam2 = lam.detach().clone().requires_grad_(), gam.detach().clone().requires_grad_()
    (lam2[:, :, None] * basis * gam2[None] * weights).sum().backward()
    torch.testing.assert_close(lam.grad, lam2.grad)
    torch.testing.assert_close(gam.grad, gam2.grad)
    basis.requires_grad_(True)
    ScaledBasis.apply(basis, lam, gam).sum().backward()
    assert basis.grad is None


def test_bases_are_shared_regenerated_from_the_seed_and_not_saved():
    model, _ = ours(torch_seed=0)
    again, _ = ours(torch_seed=123)  # another global RNG state: the bases come from basis_seed alone
    other, _ = ours(seed=1)
    layers = list(adapted_layers(model).values())
    assert all(layer.adapter.bases is layers[0].adapter.bases for layer in layers)
    first = layers[0].adapter.bases
    # Sized by the largest output (64) and input (64) over the targets: d = D = 64, N = 64 / 8.
    assert first.A.shape == (8, 1, 64) and first.B.shape == (64, 8, 8)
    assert torch.equal(first.A, next(iter(adapted_layers(again).values())).adapter.bases.A)
    assert torch.equal(first.B, next(iter(adapted_layers(again).values())).adapter.bases.B)
    assert not torch.equal(first.B, next(iter(adapted_layers(other).values())).adapter.bases.B)
    assert first.A.std().item() == pytest.approx(1, rel=0.02) and first.B.std().item() == pytest.approx(1, rel=0.02)
    assert not any(".bases." in key for key in model.state_dict())


def peft_and_ours(rank: int, alpha: float, bases: str):
    base = tiny_bert()
    config = peft.RandLoraConfig(r=rank, randlora_alpha=alpha, target_modules=TARGETS, projection_prng_key=0,
                                 sparse=bases == "sparse", very_sparse=bases == "very_sparse",
                                 modules_to_save=["classifier"])
    peft_model = peft.get_peft_model(copy.deepcopy(base), config)
    mine = copy.deepcopy(base)
    RandLoRA(rank=rank, alpha=alpha, basis_seed=0, bases=bases, target_modules=TARGETS).prepare(
        mine, target_defaults=[], head_modules=["classifier"])
    perturb(mine)
    params = dict(peft_model.named_parameters())
    with torch.no_grad():
        for name, layer in adapted_layers(mine).items():
            for kind in ("lambda", "gamma"):
                theirs = params[f"base_model.model.{name}.randlora_{kind}.default"]
                theirs.copy_(getattr(layer.adapter, f"randlora_{kind}"))
    return peft_model, mine


@pytest.mark.parametrize("rank,bases", [(8, "dense"), (12, "dense"), (8, "sparse")])
def test_randlora_matches_peft_bases_forward_merge_and_training(rank, bases):
    peft_model, mine = peft_and_ours(rank, 2.0 * rank, bases)
    shared = next(iter(adapted_layers(mine).values())).adapter.bases
    torch.testing.assert_close(shared.A, peft_model.base_model.randlora_A["default"].float(), atol=0, rtol=0)
    torch.testing.assert_close(shared.B, peft_model.base_model.randlora_B["default"].float(), atol=0, rtol=0)
    n_peft = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert sum(p.numel() for p in trainable_parameters(mine).values()) == n_peft
    torch.testing.assert_close(mine(**batch()).logits, peft_model(**batch()).logits, atol=1e-5, rtol=1e-4)
    for name in ("bert.encoder.layer.0.intermediate.dense", "bert.encoder.layer.0.output.dense"):
        peft_layer = peft_model.base_model.model.get_submodule(name)
        layer = adapted_layers(mine)[name]
        torch.testing.assert_close(layer.adapter.delta_weight(), peft_layer.get_delta_weight("default"),
                                   atol=1e-6, rtol=1e-5)
    adamw_steps(peft_model)
    adamw_steps(mine)
    torch.testing.assert_close(mine(**batch()).logits, peft_model(**batch()).logits, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("options,match", [
    ({"rank": 0}, "method.rank=0"),
    ({"alpha": 0}, "method.alpha=0"),
    ({"basis_seed": -1}, "method.basis_seed=-1"),
    ({"bases": "gaussian"}, "method.bases=gaussian"),
    ({"dropout": 1.0}, "method.dropout=1.0"),
])
def test_bad_options_are_refused_early(options, match):
    with pytest.raises(UserError, match=match):
        RandLoRA(**options)


def test_scale_is_alpha_over_rank():
    assert RandLoRA(rank=32, alpha=640).scale == pytest.approx(20.0)
    assert math.isclose(RandLoRA(rank=8, alpha=16).scale, 2.0)
