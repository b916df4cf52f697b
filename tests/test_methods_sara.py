"""SaRA against its equations: the mask, the gradient at the mask, the nuclear-norm term,
progressive re-masking and sparse storage. Expected values are computed here, from W."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from peftlab.experiment import trained_tensors
from peftlab.methods.base import adapted_layers
from peftlab.methods.sara import SaRA


def layer_model(m: int = 70, n: int = 80, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(n, m))
    nn.init.normal_(model[0].weight, std=0.01)
    return model


def adapted(theta: float = 2e-3, **options) -> tuple[nn.Module, SaRA, torch.Tensor]:
    model = layer_model()
    w = model[0].weight.detach().clone()
    method = SaRA(theta=theta, **options)
    method.prepare(model, target_defaults=["0"])
    return model, method, w


def test_mask_is_the_small_entries_and_they_start_at_their_original_values():
    model, _, w = adapted()
    adapter = adapted_layers(model)["0"].adapter
    expected = np.flatnonzero(np.abs(w.numpy()) < 2e-3)
    assert 0 < expected.size < w.numel()
    assert adapter.sara_indices.tolist() == expected.tolist()
    # The original values, signs included (the official code writes |W|).
    assert torch.equal(adapter.sara_values.detach(), torch.from_numpy(w.numpy().reshape(-1)[expected]))
    assert (adapter.sara_values < 0).any()
    base = model[0].base.weight.detach().reshape(-1)
    assert torch.all(base[expected] == 0)
    keep = np.setdiff1d(np.arange(w.numel()), expected)
    assert torch.equal(base[keep], w.reshape(-1)[keep])
    x = torch.randn(5, 80)
    torch.testing.assert_close(model(x), x @ w.T + model[0].base.bias, atol=1e-6, rtol=1e-5)


def test_the_gradient_is_the_full_gradient_gathered_at_the_mask():
    model, _, w = adapted()
    bias = model[0].base.bias.detach()
    x, target = torch.randn(6, 80), torch.randn(6, 70)
    ((model(x) - target) ** 2).sum().backward()
    w_full = w.clone().requires_grad_(True)
    ((x @ w_full.T + bias - target) ** 2).sum().backward()
    adapter = adapted_layers(model)["0"].adapter
    torch.testing.assert_close(adapter.sara_values.grad, w_full.grad.reshape(-1)[adapter.sara_indices])


def test_nuclear_norm_term_is_lambda_times_the_sum_of_singular_values_of_the_masked_weights():
    model, method, w = adapted(lambda_rank=0.25)
    masked = np.where(np.abs(w.numpy()) < 2e-3, w.numpy(), 0.0)
    expected = 0.25 * np.linalg.svd(masked.astype(np.float64), compute_uv=False).sum()
    term = method.loss_terms(model)["sara_nuclear"]
    assert float(term) == pytest.approx(expected, rel=1e-5)
    # Layers no wider than nuclear_min_dim are never drawn.
    small, method_small, _ = adapted(nuclear_min_dim=70)
    assert method_small.loss_terms(small) == {}


def test_progressive_remask_freezes_grown_entries_and_drops_their_moments():
    model, method, w = adapted(progressive_iter=2)
    adapter = adapted_layers(model)["0"].adapter
    opt = torch.optim.AdamW(list(adapter.parameters()), lr=1e-3, weight_decay=0.5)
    method.on_train_begin(model, optimizer=opt)
    x = torch.randn(6, 80)

    def step(i: int) -> None:
        model(x).pow(2).sum().backward()
        method.on_after_backward(model, i)
        method.on_before_optimizer_step(model, i, 1e-3)
        opt.step()
        method.on_after_optimizer_step(model, i, 10)
        opt.zero_grad()

    step(0)
    with torch.no_grad():  # two entries grow past theta before the re-mask
        adapter.sara_values[:2] = torch.tensor([0.01, -0.02])
    step(1)  # the re-mask runs after this step (progressive_iter = 2)
    expected_active = (adapter.sara_values.detach().abs() < 2e-3)
    assert torch.equal(adapter.sara_active, expected_active) and not expected_active[:2].any()
    assert adapter.sara_values not in opt.state or not opt.state[adapter.sara_values]
    frozen = adapter.sara_values.detach()[~expected_active].clone()
    trained = adapter.sara_values.detach()[expected_active].clone()
    step(2)
    after = adapter.sara_values.detach()
    assert torch.equal(after[~expected_active], frozen)  # no gradient and no weight decay
    assert not torch.equal(after[expected_active], trained)


def test_storage_is_sparse_indices_and_values():
    model, _, w = adapted()
    tensors = trained_tensors(model)
    k = int((w.abs() < 2e-3).sum())
    assert set(tensors) == {"0.adapter.sara_values", "0.adapter.sara_indices", "0.adapter.sara_active"}
    assert all(t.shape == (k,) for t in tensors.values())


def test_bad_options_are_user_errors():
    from peftlab.errors import UserError

    with pytest.raises(UserError, match="method.theta=0"):
        SaRA(theta=0)
    with pytest.raises(UserError, match="method.lambda_rank=-1"):
        SaRA(lambda_rank=-1)
    with pytest.raises(UserError, match="selects no weight"):
        adapted(theta=1e-9)
