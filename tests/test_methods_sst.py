"""SST against its equations: the sampling distribution, the enhanced gradients, the step
(sampled vectors only, unit length, sigma >= 0) and the periodic re-SVD."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from peftlab.methods.base import adapted_layers
from peftlab.methods.sst import SST


def adapted(rank: int = 2, resvd_steps: int = 100, m: int = 6, n: int = 5):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(n, m))
    w = model[0].weight.detach().clone()
    method = SST(rank=rank, resvd_steps=resvd_steps)
    method.prepare(model, target_defaults=["0"])
    return model, method, adapted_layers(model)["0"].adapter, w


def test_sampling_follows_half_uniform_half_spectrum():
    model, method, adapter, w = adapted(rank=1)
    sigma = np.linalg.svd(w.double().numpy(), compute_uv=False)
    expected = 0.5 * (1 / sigma.size + sigma / sigma.sum())
    np.testing.assert_allclose(adapter.probabilities().double().numpy(), expected, rtol=1e-5)
    counts = np.zeros(sigma.size)
    draws = 4000
    for step in range(draws):
        adapter.sst_U.grad = torch.ones_like(adapter.sst_U)
        method.on_after_backward(model, step)
        counts[adapter.sst_U.grad.abs().sum(0).nonzero().flatten().numpy()] += 1
    assert counts.sum() == draws
    np.testing.assert_allclose(counts / draws, expected, atol=0.025)


def test_gradients_are_the_enhanced_ones():
    model, _, adapter, w = adapted()
    x, y = torch.randn(7, 5), torch.randn(7, 6)
    (model(x) - y).pow(2).sum().backward()
    weight = w.clone().requires_grad_(True)  # the model computes W exactly at init (up to float error)
    (x @ weight.T + model[0].base.bias.detach() - y).pow(2).sum().backward()
    g, u, vh = weight.grad, adapter.sst_U.detach(), adapter.sst_Vh.detach()
    torch.testing.assert_close(adapter.sst_U.grad, g @ vh.T, atol=1e-5, rtol=1e-4)  # G V_i, no sigma_i
    torch.testing.assert_close(adapter.sst_Vh.grad, u.T @ g, atol=1e-5, rtol=1e-4)  # (G^T U_i)^T
    torch.testing.assert_close(adapter.sst_S.grad, torch.diagonal(u.T @ g @ vh.T), atol=1e-5, rtol=1e-4)


def test_a_step_moves_only_the_sampled_vectors_keeps_them_unit_length_and_sigma_nonnegative():
    model, method, adapter, _ = adapted(rank=2)
    opt = torch.optim.AdamW(list(adapter.parameters()), lr=0.5, weight_decay=0.1)
    method.on_train_begin(model, optimizer=opt)
    x = torch.randn(7, 5)
    for step in range(3):
        u0, vh0 = adapter.sst_U.detach().clone(), adapter.sst_Vh.detach().clone()
        model(x).pow(2).sum().backward()
        method.on_after_backward(model, step)
        drawn = method.drawn[adapter].tolist()
        method.on_before_optimizer_step(model, step, 0.5)
        opt.step()
        method.on_after_optimizer_step(model, step, 3)
        opt.zero_grad()
        rest = [i for i in range(5) if i not in drawn]
        assert torch.equal(adapter.sst_U[:, rest], u0[:, rest]) and torch.equal(adapter.sst_Vh[rest], vh0[rest])
        assert not torch.equal(adapter.sst_U[:, drawn], u0[:, drawn])
        torch.testing.assert_close(adapter.sst_U[:, drawn].norm(dim=0), torch.ones(2))
        torch.testing.assert_close(adapter.sst_Vh[drawn].norm(dim=1), torch.ones(2))
        assert (adapter.sst_S >= 0).all()


def two_steps(resvd_steps: int):
    model, method, adapter, _ = adapted(rank=2, resvd_steps=resvd_steps)
    opt = torch.optim.AdamW(list(adapter.parameters()), lr=0.3)
    method.on_train_begin(model, optimizer=opt)
    x = torch.randn(7, 5, generator=torch.Generator().manual_seed(4))
    for step in range(2):
        model(x).pow(2).sum().backward()
        method.on_after_backward(model, step)
        method.on_before_optimizer_step(model, step, 0.3)
        opt.step()
        method.on_after_optimizer_step(model, step, 2)
        opt.zero_grad()
    return adapter, opt


def test_resvd_keeps_the_function_orthonormalises_and_drops_the_moments():
    plain, plain_opt = two_steps(resvd_steps=100)  # the same run without the re-SVD
    u = plain.sst_U.detach()
    assert not torch.allclose(u.T @ u, torch.eye(5), atol=1e-3)  # training broke orthogonality
    assert all(plain_opt.state.get(p) for p in plain.parameters())
    adapter, opt = two_steps(resvd_steps=2)
    u, vh, s = adapter.sst_U.detach(), adapter.sst_Vh.detach(), adapter.sst_S.detach()
    torch.testing.assert_close(adapter.delta_weight().detach(), plain.delta_weight().detach(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(u.T @ u, torch.eye(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(vh @ vh.T, torch.eye(5), atol=1e-5, rtol=0)
    assert torch.all(s[:-1] >= s[1:])
    assert all(not opt.state.get(p) for p in adapter.parameters())
