"""The fused low-rank node: its values and gradients are those of the plain composition, and
the paths it cannot serve (dropout in training, autocast, mixed dtypes, trainable W) take the plain one."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from peftlab.methods.low_rank import LowRankLinear, lora_linear


def plain(x, w, bias, a, b, s):
    """The equation, composed by autograd: x W^T + b + s (x A^T) B^T."""
    return F.linear(x, w, bias) + s * F.linear(F.linear(x, a), b)


def operands(shape=(3, 5, 12), m=7, r=4, bias=True, dtype=torch.float64, x_grad=True):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g, dtype=dtype).requires_grad_(x_grad)
    w = torch.randn(m, shape[-1], generator=g, dtype=dtype)
    bb = torch.randn(m, generator=g, dtype=dtype) if bias else None
    a = torch.randn(r, shape[-1], generator=g, dtype=dtype).requires_grad_()
    b = torch.randn(m, r, generator=g, dtype=dtype).requires_grad_()
    return x, w, bb, a, b


@pytest.mark.parametrize("shape", [(3, 5, 12), (9, 12)])
@pytest.mark.parametrize("bias", [True, False])
def test_value_and_gradients_equal_the_plain_composition(shape, bias):
    x, w, bb, a, b = operands(shape, bias=bias)
    upstream = torch.randn(*shape[:-1], 7, dtype=torch.float64)
    fused = LowRankLinear.apply(x, w, bb, a, b, 2.5)
    grads = torch.autograd.grad(fused, (x, a, b), upstream)
    ref = plain(x, w, bb, a, b, 2.5)
    ref_grads = torch.autograd.grad(ref, (x, a, b), upstream)
    torch.testing.assert_close(fused, ref)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want)
        assert got.shape == want.shape


def test_gradcheck_in_double_precision():
    x, w, bb, a, b = operands((2, 3, 6), m=5, r=2)
    assert torch.autograd.gradcheck(lambda x, a, b: LowRankLinear.apply(x, w, bb, a, b, 0.7), (x, a, b))


def test_an_input_without_gradient_gets_none_and_the_factors_still_train():
    x, w, bb, a, b = operands(x_grad=False)
    LowRankLinear.apply(x, w, bb, a, b, 2.0).sum().backward()
    a2, b2 = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    plain(x, w, bb, a2, b2, 2.0).sum().backward()
    assert x.grad is None
    torch.testing.assert_close(a.grad, a2.grad)
    torch.testing.assert_close(b.grad, b2.grad)


def grad_fn_names(out: torch.Tensor) -> set[str]:
    names, stack = set(), [out.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None:
            continue
        names.add(type(fn).__name__)
        stack.extend(f for f, _ in fn.next_functions)
    return names


def layer(m=7, n=12, dtype=torch.float32):
    base = nn.Linear(n, m).to(dtype)
    base.requires_grad_(False)
    a = nn.Parameter(torch.randn(4, n))
    b = nn.Parameter(torch.randn(m, 4))
    return base, a, b


def test_lora_linear_fuses_on_the_plain_path():
    base, a, b = layer()
    out = lora_linear(torch.randn(2, 3, 12), base, a, b, 2.0, nn.Identity())
    assert "LowRankLinearBackward" in grad_fn_names(out)


@pytest.mark.parametrize("case", ["dropout", "autocast", "bf16 base", "trainable weight", "subclass"])
def test_lora_linear_falls_back_where_the_node_does_not_apply(case):
    base, a, b = layer(dtype=torch.bfloat16 if case == "bf16 base" else torch.float32)
    dropout: nn.Module = nn.Identity()
    x = torch.randn(2, 3, 12, dtype=base.weight.dtype)
    if case == "dropout":
        dropout = nn.Dropout(0.5).train()
    if case == "trainable weight":
        base.weight.requires_grad_(True)
    if case == "subclass":
        class Scaled(nn.Linear):
            def forward(self, inputs):
                return 3 * super().forward(inputs)
        scaled = Scaled(12, 7)
        scaled.load_state_dict(base.state_dict())
        scaled.requires_grad_(False)
        base = scaled
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=case == "autocast"):
        out = lora_linear(x, base, a, b, 2.0, dropout)
    assert "LowRankLinearBackward" not in grad_fn_names(out)
    if case == "subclass":  # the subclass's own forward is kept
        torch.testing.assert_close(out, 3 * F.linear(x, base.weight, base.bias) + 2.0 * F.linear(F.linear(x, a), b))
    if case == "bf16 base":  # the update runs in the factors' dtype and is cast back
        assert out.dtype == torch.bfloat16
        want = F.linear(x, base.weight, base.bias) + (2.0 * F.linear(F.linear(x.float(), a), b)).bfloat16()
        torch.testing.assert_close(out, want)


def test_dropout_in_evaluation_uses_the_fused_node():
    base, a, b = layer()
    out = lora_linear(torch.randn(4, 12), base, a, b, 1.0, nn.Dropout(0.3).eval())
    assert "LowRankLinearBackward" in grad_fn_names(out)


def test_gradient_checkpointing_recomputes_the_node_to_the_same_gradients():
    from peftlab.config import build, compose
    from peftlab.methods.base import trainable_parameters

    def grads(checkpointing: bool) -> dict[str, torch.Tensor]:
        loaded = build(compose(["model=tiny"]).model, num_labels=3, seed=0)
        method = build(compose(["method=lora"]).method)
        method.prepare(loaded.model, target_defaults=loaded.target_defaults, head_modules=loaded.head_modules)
        params = trainable_parameters(loaded.model)
        with torch.no_grad():
            for p in params.values():  # B = 0 at init would leave A without gradient
                p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        if checkpointing:
            loaded.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        loaded.model.train()
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(1000, 2000, (4, 10), generator=g)
        loaded.model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([0, 1, 2, 0])).loss.backward()
        return {name: p.grad.clone() for name, p in params.items()}

    plain_grads, checkpointed = grads(False), grads(True)
    assert any("lora_A" in name for name in plain_grads)
    for name, value in plain_grads.items():
        torch.testing.assert_close(checkpointed[name], value, msg=name)
