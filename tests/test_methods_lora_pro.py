"""LoRA-Pro against its closed form, computed here with Kronecker least squares.

The map ``(dA, dB) -> s B dA + s dB A`` is a matrix K on the stacked, flattened factors.
LoRA-Pro's adjusted gradients are the minimum-norm least-squares solution ``K^+ vec(g*)``
(the Sylvester step picks it among all solutions), and its equivalent gradient is the
projection ``K K^+ vec(G)`` of the full gradient. A training step is checked against
full-size Adam on that projection followed by plain SGD with the true scale s.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from peftlab.methods.base import adapted_layers
from peftlab.methods.lora_pro import LoRAPro, adjusted_gradients


def kron_map(a: np.ndarray, b: np.ndarray, s: float) -> np.ndarray:
    m, n = b.shape[0], a.shape[1]
    return np.concatenate([np.kron(s * b, np.eye(n)), np.kron(np.eye(m), s * a.T)], axis=1)


def min_norm_step(a: np.ndarray, b: np.ndarray, g: np.ndarray, s: float) -> tuple[np.ndarray, np.ndarray]:
    solution = np.linalg.pinv(kron_map(a, b, s), rcond=1e-10) @ g.reshape(-1)
    r, n = a.shape
    return solution[: r * n].reshape(r, n), solution[r * n:].reshape(b.shape)


@pytest.mark.parametrize("first", [False, True])
def test_adjusted_gradients_are_the_min_norm_least_squares_fit(first):
    rng = np.random.default_rng(0)
    m, n, r, s = 7, 6, 2, 1.7
    a, g = rng.normal(size=(r, n)), rng.normal(size=(m, n))
    b = np.zeros((m, r)) if first else rng.normal(size=(m, r))
    t = lambda x: torch.from_numpy(x)  # noqa: E731
    d_a, d_b = adjusted_gradients(t(a), t(b), t(s * b.T @ g), t(s * g @ a.T), s, first)
    e_a, e_b = min_norm_step(a, b, g, s)
    np.testing.assert_allclose(d_a.numpy(), e_a, atol=1e-6)
    np.testing.assert_allclose(d_b.numpy(), e_b, atol=1e-6)


def test_two_training_steps_follow_full_size_adam_and_sgd_with_the_true_scale():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5))
    method = LoRAPro(rank=2, alpha=7)  # s = 3.5, not the official hard-coded 2
    method.prepare(model, target_defaults=["0"])
    adapter = adapted_layers(model)["0"].adapter
    assert adapter.scale == 3.5
    opt = torch.optim.AdamW(list(adapter.parameters()), lr=0.05, weight_decay=0.0, betas=(0.9, 0.99), eps=1e-8)
    method.on_train_begin(model, optimizer=opt)
    w = model[0].base.weight.detach().double().numpy()
    bias = model[0].base.bias.detach().double().numpy()
    x, y = torch.randn(8, 6), torch.randn(8, 5)
    a, b, s = adapter.lora_A.detach().double().numpy(), adapter.lora_B.detach().double().numpy(), 3.5
    mom, var = np.zeros_like(w), np.zeros_like(w)
    for t in range(2):
        model(x).sub(y).pow(2).sum().backward()
        method.on_after_backward(model, t)
        method.on_before_optimizer_step(model, t, 0.05)
        opt.step()
        method.on_after_optimizer_step(model, t, 2)
        opt.zero_grad()
        # Independently: the full gradient at W + s B A, its projection, Adam, the min-norm step, SGD.
        xn, yn = x.double().numpy(), y.double().numpy()
        full = 2 * ((xn @ (w + s * b @ a).T + bias - yn).T @ xn)
        k = kron_map(a, b, s)
        projected = (k @ np.linalg.pinv(k, rcond=1e-10) @ full.reshape(-1)).reshape(full.shape)
        mom, var = 0.9 * mom + 0.1 * projected, 0.99 * var + 0.01 * projected**2
        g_star = (mom / (1 - 0.9 ** (t + 1))) / (np.sqrt(var / (1 - 0.99 ** (t + 1))) + 1e-8)
        step_a, step_b = min_norm_step(a, b, g_star, s)
        a, b = a - 0.05 * step_a, b - 0.05 * step_b
        np.testing.assert_allclose(adapter.lora_A.detach().double().numpy(), a, rtol=2e-3, atol=2e-4)
        np.testing.assert_allclose(adapter.lora_B.detach().double().numpy(), b, rtol=2e-3, atol=2e-4)
    state = opt.state[adapter.lora_A]
    assert int(state["step"]) == 2 and state["lora_pro_exp_avg"].shape == (5, 6)
    np.testing.assert_allclose(state["lora_pro_exp_avg"].double().numpy(), mom, rtol=2e-3, atol=1e-5)
    assert "exp_avg" not in state and not opt.state[adapter.lora_B]  # AdamW never stepped the factors
    reloaded = torch.optim.AdamW(list(adapter.parameters()), lr=0.05)  # as a resumed run reloads it
    reloaded.load_state_dict(opt.state_dict())
    assert torch.equal(reloaded.state[adapter.lora_A]["lora_pro_exp_avg_sq"], state["lora_pro_exp_avg_sq"])


def test_a_skipped_step_leaves_the_moments_unchanged():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5))
    method = LoRAPro(rank=2, alpha=4)
    method.prepare(model, target_defaults=["0"])
    adapter = adapted_layers(model)["0"].adapter
    opt = torch.optim.AdamW(list(adapter.parameters()), lr=0.05)
    method.on_train_begin(model, optimizer=opt)
    model(torch.randn(3, 6)).sum().backward()
    method.on_after_backward(model, 0)  # then the loop drops the step (non-finite loss): no optimizer step
    opt.zero_grad()
    assert "lora_pro_exp_avg" not in opt.state[adapter.lora_A]


def test_memory_is_two_full_size_moments_per_layer():
    model = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 4))
    method = LoRAPro(rank=2)
    method.prepare(model, target_defaults=["0", "1"])
    assert method.memory_bytes(model) == {"lora_pro_moments": 2 * (5 * 6 + 4 * 5) * 4}


def test_dry_run_reports_the_full_size_moments():
    from tests.conftest import peftlab

    result = peftlab("train", "model=tiny", "method=lora_pro", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "method lora_pro_moments" in " ".join(result.stdout.split())


def _one_step(runs_dir, name: str, clip: str) -> tuple[dict, float]:
    import json

    from safetensors.torch import load_file

    from tests.conftest import peftlab

    result = peftlab("train", "model=tiny", "method=lora_pro", "trainer.max_steps=1", "trainer.log_every=1",
                     "trainer.warmup_ratio=0", "trainer.schedule=constant", f"trainer.max_grad_norm={clip}",
                     "optimizer.lr=1e-3", f"name={name}", "-q")
    assert result.returncode == 0, result.stderr
    folder = next((runs_dir / name).glob("v*"))
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    norm = next(line["grad_norm"] for line in lines if line.get("split") == "train" and "grad_norm" in line)
    return load_file(str(folder / "adapter" / "adapter.safetensors")), norm


def test_clipping_scales_the_adjusted_gradients_by_the_raw_gradient_norm(runs_dir):
    """As the official DeepSpeed step: norm of backward's gradients, then the adjustment, then the scale."""
    clipped, raw_norm = _one_step(runs_dir, "clipped", "1e-4")
    free, same_norm = _one_step(runs_dir, "free", "1e9")
    assert raw_norm == pytest.approx(same_norm, rel=1e-6) and raw_norm > 1e-4
    factors = [k for k in free if "lora_B" in k]
    assert factors
    for key in factors:  # B starts at zero, so after one step it is -lr * c * D_B
        assert free[key].abs().max() > 0
        torch.testing.assert_close(clipped[key], free[key] * (1e-4 / (raw_norm + 1e-6)), rtol=1e-4, atol=1e-12)


def test_fp16_is_refused_before_anything_loads(monkeypatch):
    import peftlab.experiment as experiment
    from peftlab.config import compose
    from peftlab.errors import UserError

    monkeypatch.setattr(experiment, "build_task", lambda cfg: pytest.fail("the task was built before the refusal"))
    cfg = compose(["model=tiny", "method=lora_pro", "trainer.precision=fp16"])
    with pytest.raises(UserError, match="LoRAPro does not support trainer.precision=fp16"):
        experiment.build_experiment(cfg)
