"""Spec tests for DoRA, SORSA and SALT, straight from the equations in their papers."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from peftlab.errors import UserError
from peftlab.methods.base import adapted_layers, trainable_parameters
from peftlab.methods.dora import DoRA
from peftlab.methods.salt import SALT
from peftlab.methods.sorsa import SORSA


def tiny(m: int = 10, n: int = 12, layers: int = 1) -> nn.Sequential:
    """Linear(n, m) as module "0"; with layers=2, also Tanh and Linear(m, m) as module "2"."""
    torch.manual_seed(0)
    if layers == 1:
        return nn.Sequential(nn.Linear(n, m))
    return nn.Sequential(nn.Linear(n, m), nn.Tanh(), nn.Linear(m, m))


def adapt(method, model: nn.Module, targets=("0",)) -> nn.Module:
    method.target_modules = list(targets)
    method.prepare(model, target_defaults=[], head_modules=[])
    return model


def only_layer(model: nn.Module):
    layers = list(adapted_layers(model).values())
    assert len(layers) == 1
    return layers[0]


# ----------------------------------------------------------------------------- DoRA


def perturbed_dora(dropout: float = 0.0):
    model = tiny()
    w0, b0 = model[0].weight.detach().clone(), model[0].bias.detach().clone()
    adapt(DoRA(rank=4, alpha=8, dropout=dropout), model)
    layer = only_layer(model)
    with torch.no_grad():
        layer.adapter.lora_A.normal_()
        layer.adapter.lora_B.normal_(std=0.3)
        layer.adapter.lora_magnitude.mul_(torch.rand(10) + 0.5)
    return model, layer, w0, b0


def test_dora_magnitude_init_is_row_norms_and_output_unchanged():
    model = tiny()
    ref = copy.deepcopy(model)
    adapt(DoRA(rank=4, alpha=8), model)
    layer = only_layer(model)
    torch.testing.assert_close(layer.adapter.lora_magnitude.detach(), torch.norm(ref[0].weight, dim=1))
    x = torch.randn(5, 12)
    torch.testing.assert_close(model(x), ref(x), atol=1e-6, rtol=0)
    assert layer.adapter.expected_trainable() == 4 * (10 + 12) + 10
    assert sum(p.numel() for p in trainable_parameters(model).values()) == 4 * 22 + 10


def test_dora_forward_equals_naive_formula():
    model, layer, w, b = perturbed_dora()
    a = layer.adapter
    x = torch.randn(3, 7, 12)
    v = w + a.scale * a.lora_B @ a.lora_A
    naive = F.linear(x, (a.lora_magnitude / v.norm(dim=1))[:, None] * v, b)
    torch.testing.assert_close(model(x), naive, atol=1e-5, rtol=1e-5)


def test_dora_norm_is_detached():
    model, layer, w, b = perturbed_dora()
    a = layer.adapter
    x = torch.randn(6, 12)
    target = torch.randn(6, 10)
    ((model(x) - target) ** 2).sum().backward()
    ours = {n: p.grad.clone() for n, p in (("A", a.lora_A), ("B", a.lora_B), ("mag", a.lora_magnitude))}

    def naive_grads(detach: bool):
        A, B, mag = (t.detach().clone().requires_grad_() for t in (a.lora_A, a.lora_B, a.lora_magnitude))
        v = w + a.scale * B @ A
        norm = v.norm(dim=1)
        norm = norm.detach() if detach else norm
        y = F.linear(x, (mag / norm)[:, None] * v, b)
        ((y - target) ** 2).sum().backward()
        return {"A": A.grad, "B": B.grad, "mag": mag.grad}

    detached, through = naive_grads(True), naive_grads(False)
    for name in ours:
        torch.testing.assert_close(ours[name], detached[name], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(ours["B"], through["B"], atol=1e-3)  # the test can tell the difference


def test_dora_merge_then_unmerge():
    model, layer, w, b = perturbed_dora()
    a = layer.adapter
    x = torch.randn(4, 12)
    before = model(x).detach()
    layer.merge()
    v = w + a.scale * a.lora_B.detach() @ a.lora_A.detach()
    torch.testing.assert_close(layer.base.weight, (a.lora_magnitude.detach() / v.norm(dim=1))[:, None] * v)
    torch.testing.assert_close(model(x), before, atol=1e-5, rtol=1e-5)
    layer.unmerge()
    torch.testing.assert_close(layer.base.weight, w, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(model(x), before, atol=1e-5, rtol=1e-5)


def test_dora_dropout_uses_dropped_input_for_both_terms():
    model, layer, w, b = perturbed_dora(dropout=0.5)
    a = layer.adapter
    x = torch.randn(8, 12)
    torch.manual_seed(3)
    y = model(x)
    torch.manual_seed(3)
    xd = a.dropout(x)
    v_norm = (w + a.scale * a.lora_B @ a.lora_A).norm(dim=1)
    scale = a.lora_magnitude / v_norm
    expected = F.linear(x, w, b) + (scale - 1) * F.linear(xd, w) + scale * a.scale * (xd @ a.lora_A.T @ a.lora_B.T)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
    model.eval()  # no dropout: the naive formula on x itself
    naive = F.linear(x, scale[:, None] * (w + a.scale * a.lora_B @ a.lora_A), b)
    torch.testing.assert_close(model(x), naive, atol=1e-5, rtol=1e-5)


def test_dora_matches_peft():
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=32, num_labels=3,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    pretrained = transformers.BertForSequenceClassification(config)
    theirs = peft.get_peft_model(copy.deepcopy(pretrained), peft.LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["query", "value"], use_dora=True,
        init_lora_weights=True, modules_to_save=["classifier"]))
    ours = copy.deepcopy(pretrained)
    DoRA(rank=4, alpha=8, target_modules=["query", "value"]).prepare(
        ours, target_defaults=[], head_modules=["classifier"])

    peft_layers = {n: m for n, m in theirs.named_modules() if hasattr(m, "lora_magnitude_vector")
                   and "default" in m.lora_magnitude_vector}
    our_layers = adapted_layers(ours)
    assert len(our_layers) == len(peft_layers) == 4
    for name, layer in our_layers.items():
        peer = next(m for n, m in peft_layers.items() if n.endswith(name))
        with torch.no_grad():
            layer.adapter.lora_A.copy_(peer.lora_A["default"].weight)  # kaiming draws differ in order
        torch.testing.assert_close(layer.adapter.lora_magnitude, peer.lora_magnitude_vector["default"].weight)
        torch.testing.assert_close(layer.adapter.lora_B, peer.lora_B["default"].weight)

    torch.manual_seed(1)
    ids = torch.randint(0, 64, (4, 10))
    labels = torch.randint(0, 3, (4,))
    theirs.train(), ours.train()
    torch.testing.assert_close(ours(input_ids=ids).logits, theirs(input_ids=ids).logits, atol=1e-5, rtol=0)

    their_params = [p for p in theirs.parameters() if p.requires_grad]
    our_params = list(trainable_parameters(ours).values())
    assert sum(p.numel() for p in our_params) == sum(p.numel() for p in their_params)
    opt_theirs = torch.optim.AdamW(their_params, lr=1e-2)
    opt_ours = torch.optim.AdamW(our_params, lr=1e-2)
    for _ in range(3):
        for model, opt in ((theirs, opt_theirs), (ours, opt_ours)):
            opt.zero_grad()
            F.cross_entropy(model(input_ids=ids).logits, labels).backward()
            opt.step()
    torch.testing.assert_close(ours(input_ids=ids).logits, theirs(input_ids=ids).logits, atol=1e-5, rtol=0)
    for name, layer in our_layers.items():
        peer = next(m for n, m in peft_layers.items() if n.endswith(name))
        torch.testing.assert_close(layer.adapter.lora_magnitude, peer.lora_magnitude_vector["default"].weight,
                                   atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- SORSA


def test_sorsa_init_reproduces_output_and_is_orthonormal():
    model = tiny(layers=2)
    ref = copy.deepcopy(model)
    method = SORSA(rank=3)
    adapt(method, model, targets=("0", "2"))
    x = torch.randn(5, 12)
    torch.testing.assert_close(model(x), ref(x), atol=1e-5, rtol=0)
    assert method.orthonormal_loss(model).item() < 1e-5
    # s = 1: the frozen residual is the bottom (k - r) part of W
    layer = adapted_layers(model)["0"]
    u, s, vh = torch.linalg.svd(ref[0].weight.detach(), full_matrices=False)
    torch.testing.assert_close(layer.base.weight, u[:, 3:] @ torch.diag(s[3:]) @ vh[3:], atol=1e-5, rtol=0)
    torch.testing.assert_close(layer.adapter.sorsa_S.detach(), s[:3])


def test_sorsa_scale_and_counts():
    model = tiny()
    ref = copy.deepcopy(model)
    adapt(SORSA(rank=4, alpha=8), model)
    layer = only_layer(model)
    assert layer.adapter.scale == 2.0
    x = torch.randn(5, 12)
    torch.testing.assert_close(model(x), ref(x), atol=1e-5, rtol=0)
    assert layer.adapter.expected_trainable() == 4 * (10 + 12) + 4
    assert sum(p.numel() for p in trainable_parameters(model).values()) == 4 * 22 + 4


def test_sorsa_decoupled_gradient_rule():
    gamma, lr, clip = 4e-4, 1e-3, 0.05
    model = tiny(layers=2)
    method = SORSA(rank=3, gamma=gamma)
    adapt(method, model, targets=("0", "2"))
    adapters = [layer.adapter for layer in adapted_layers(model).values()]
    with torch.no_grad():
        for a in adapters:
            a.sorsa_A.add_(0.1 * torch.randn_like(a.sorsa_A))
            a.sorsa_B.add_(0.1 * torch.randn_like(a.sorsa_B))
    params = list(trainable_parameters(model).values())

    # Independent L_o: mean over all 2L matrices of the (unsquared) Frobenius norms.
    def ortho():
        norms = []
        for a in adapters:
            norms.append(torch.linalg.norm(a.sorsa_A @ a.sorsa_A.T - torch.eye(3)))
            norms.append(torch.linalg.norm(a.sorsa_B.T @ a.sorsa_B - torch.eye(3)))
        return sum(norms) / len(norms)

    expected_lo = ortho()
    assert expected_lo.item() > 1e-2
    ortho_grads = torch.autograd.grad(expected_lo, params, allow_unused=True)

    x, target = torch.randn(8, 12), torch.randn(8, 10)
    ((model(x) - target) ** 2).mean().backward()
    total = torch.nn.utils.clip_grad_norm_(params, clip)
    assert total > clip  # clipping is active, so "after clipping" is tested
    clipped = [p.grad.clone() for p in params]

    logged = method.on_before_optimizer_step(model, step=0, base_lr=lr)
    torch.testing.assert_close(logged["sorsa_ortho"], expected_lo.detach())
    for p, g, og in zip(params, clipped, ortho_grads):
        want = g if og is None else g + gamma / lr * og
        torch.testing.assert_close(p.grad, want, atol=1e-6, rtol=1e-5)


def test_sorsa_gamma_zero_only_logs():
    model = tiny()
    method = SORSA(rank=3, gamma=0.0)
    adapt(method, model)
    logged = method.on_before_optimizer_step(model, step=0, base_lr=1e-3)
    assert set(logged) == {"sorsa_ortho"}
    assert all(p.grad is None for p in trainable_parameters(model).values())


# ----------------------------------------------------------------------------- SALT


def salt_layer(top_rank=None, rank=2, m=10, n=12):
    model = tiny(m=m, n=n)
    ref = copy.deepcopy(model)
    method = SALT(top_rank=top_rank, rank=rank)
    adapt(method, model)
    return model, ref, method, only_layer(model)


def effective_weight(layer) -> torch.Tensor:
    return (layer.base.weight + layer.adapter.delta_weight()).detach()


def test_salt_output_unchanged_at_init():
    model, ref, method, layer = salt_layer()
    x = torch.randn(4, 12)
    torch.testing.assert_close(model(x), ref(x), atol=0, rtol=0)
    assert torch.count_nonzero(layer.adapter.delta_weight()) == 0
    assert method.loss_terms(model)["salt_reg"].item() == 0
    assert torch.count_nonzero(layer.adapter.salt_X) > 0  # X kaiming, Y zero


def test_salt_scale_and_shift_act_only_on_top_values():
    model, ref, method, layer = salt_layer(top_rank=3)
    a = layer.adapter
    with torch.no_grad():
        a.salt_scale.copy_(torch.rand(3) * 2 - 0.5)
        a.salt_shift.copy_(torch.randn(3))
        a.salt_shift[0] = -10 * a.salt_sigma[0]  # one negative value: the ReLU clips it to 0
    u, sigma, v = a.salt_U, a.salt_sigma, a.salt_Vh.T
    coords = u.T @ effective_weight(layer) @ v
    torch.testing.assert_close(coords[:3, :3], torch.diag(torch.relu(a.salt_scale * sigma[:3] + a.salt_shift)).detach(),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(coords[3:, 3:], torch.diag(sigma[3:]), atol=1e-5, rtol=0)
    torch.testing.assert_close(coords[:3, 3:], torch.zeros(3, 7), atol=1e-5, rtol=0)
    torch.testing.assert_close(coords[3:, :3], torch.zeros(7, 3), atol=1e-5, rtol=0)
    assert coords[0, 0].abs() < 1e-5


def test_salt_low_rank_only_changes_tail_block():
    model, ref, method, layer = salt_layer(top_rank=3, rank=2)
    a = layer.adapter
    with torch.no_grad():
        a.salt_Y.normal_()
    u, sigma, v = a.salt_U, a.salt_sigma, a.salt_Vh.T
    coords = u.T @ effective_weight(layer) @ v
    torch.testing.assert_close(coords[:3, :3], torch.diag(sigma[:3]), atol=1e-5, rtol=0)
    tail = torch.relu(torch.diag(sigma[3:]) + a.salt_X @ a.salt_Y).detach()  # elementwise ReLU on the block
    torch.testing.assert_close(coords[3:, 3:], tail, atol=1e-5, rtol=0)
    torch.testing.assert_close(coords[:3, 3:], torch.zeros(3, 7), atol=1e-5, rtol=0)
    # the forward uses the same weight (factored and materialised paths)
    for x in (torch.randn(2, 12), torch.randn(64, 12)):
        torch.testing.assert_close(model(x), F.linear(x, effective_weight(layer), layer.base.bias), atol=1e-5, rtol=0)


def test_salt_regulariser_and_counts():
    model = tiny(layers=2)
    method = SALT(rank=2, reg_weight=0.01)
    adapt(method, model, targets=("0", "2"))
    adapters = [layer.adapter for layer in adapted_layers(model).values()]
    # k = 10 for both layers: r_top = max(1, int(10 * 0.1)) = 1
    assert [a.top_rank for a in adapters] == [1, 1]
    for a in adapters:
        assert a.expected_trainable() == 2 * 1 + 2 * 9 * 2
    assert sum(p.numel() for p in trainable_parameters(model).values()) == 2 * (2 + 36)
    with torch.no_grad():
        for a in adapters:
            a.salt_scale.fill_(1.5)
            a.salt_shift.fill_(0.2)
            a.salt_Y.normal_()
    expected = sum(torch.linalg.norm(1.5 * a.salt_sigma[:1] + 0.2 - a.salt_sigma[:1])
                   + torch.linalg.norm(a.salt_X @ a.salt_Y) for a in adapters)
    torch.testing.assert_close(method.loss_terms(model)["salt_reg"], 0.01 * expected.detach())
    assert SALT(reg_weight=0).loss_terms(model) == {}


def test_salt_top_rank_option():
    model, ref, method, layer = salt_layer(top_rank=4, rank=3)
    assert layer.adapter.expected_trainable() == 2 * 4 + 2 * (10 - 4) * 3
    assert sum(p.numel() for p in trainable_parameters(model).values()) == 8 + 36
    with pytest.raises(UserError, match="method.top_rank"):
        adapt(SALT(top_rank=11), tiny())


def test_salt_x_starts_with_the_relu_gain_kaiming_bound():
    # SAM2: kaiming_uniform_(X, a=sqrt(20), nonlinearity="relu") -> U(-b, b), b = sqrt(2) sqrt(3 / fan_in),
    # fan_in = rank (X is (k - r_top) x rank). Without the ReLU gain b would be sqrt(21) times smaller.
    rank = 4
    model = tiny(m=300, n=300)
    adapt(SALT(rank=rank), model)
    x = only_layer(model).adapter.salt_X.detach()
    bound = (2 ** 0.5) * (3 / rank) ** 0.5
    assert x.abs().max().item() <= bound
    assert x.abs().max().item() > 0.99 * bound  # 1080 draws: the largest is within 1% of the bound
    assert x.std().item() == pytest.approx(bound / 3 ** 0.5, rel=0.05)  # uniform, not a narrower law


# ----------------------------------------------------------------------------- DoRA detach_norm


def dora_grads(detach_norm: bool):
    model = tiny()
    w, b = model[0].weight.detach().clone(), model[0].bias.detach().clone()
    adapt(DoRA(rank=4, alpha=8, detach_norm=detach_norm), model)
    a = only_layer(model).adapter
    torch.manual_seed(1)
    with torch.no_grad():
        a.lora_A.normal_()
        a.lora_B.normal_(std=0.3)
    x, target = torch.randn(6, 12), torch.randn(6, 10)
    ((model(x) - target) ** 2).sum().backward()
    A, B = (t.detach().clone().requires_grad_() for t in (a.lora_A, a.lora_B))
    v = w + a.scale * B @ A
    norm = v.norm(dim=1) if not detach_norm else v.norm(dim=1).detach()
    ((F.linear(x, (a.lora_magnitude.detach() / norm)[:, None] * v, b) - target) ** 2).sum().backward()
    return a, A, B


@pytest.mark.parametrize("detach_norm", [True, False])
def test_dora_detach_norm_option_follows_its_formula(detach_norm):
    a, A, B = dora_grads(detach_norm)
    torch.testing.assert_close(a.lora_A.grad, A.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(a.lora_B.grad, B.grad, atol=1e-4, rtol=1e-4)


def test_dora_detach_norm_changes_the_gradient_not_the_output():
    detached, _, _ = dora_grads(True)
    through, _, _ = dora_grads(False)
    assert not torch.allclose(detached.lora_B.grad, through.lora_B.grad, atol=1e-3)
    with pytest.raises(UserError, match="method.detach_norm=yes"):
        DoRA(detach_norm="yes")


# ----------------------------------------------------------------------------- SORSA and the loop


@pytest.mark.parametrize("accum", [1, 4])
def test_sorsa_ortho_gradient_is_divided_by_the_accumulation_steps(accum):
    # Official trainer: accelerator.backward((gamma / lr) L_o) once per optimizer step, and
    # accelerate divides every backward by G: the added gradient is (gamma / (G lr)) dL_o.
    gamma, lr = 4e-4, 1e-3
    model = tiny()
    method = SORSA(rank=3, gamma=gamma)
    adapt(method, model)
    method.on_train_begin(model, total_steps=10, grad_accum=accum)
    a = only_layer(model).adapter
    with torch.no_grad():
        a.sorsa_A.add_(0.1 * torch.randn_like(a.sorsa_A))
        a.sorsa_B.add_(0.1 * torch.randn_like(a.sorsa_B))
    A, B = a.sorsa_A.detach().clone().requires_grad_(), a.sorsa_B.detach().clone().requires_grad_()
    l_o = (torch.linalg.norm(A @ A.T - torch.eye(3)) + torch.linalg.norm(B.T @ B - torch.eye(3))) / 2
    (gamma / (accum * lr) * l_o).backward()
    method.on_before_optimizer_step(model, step=0, base_lr=lr)
    torch.testing.assert_close(a.sorsa_A.grad, A.grad, atol=1e-7, rtol=1e-5)
    torch.testing.assert_close(a.sorsa_B.grad, B.grad, atol=1e-7, rtol=1e-5)


class RecordingAccelerator:
    """Stands in for accelerate's Accelerator in Trainer._update: records what the update calls."""

    def __init__(self, calls):
        self.calls = calls

    def unscale_gradients(self):
        self.calls.append("unscale")

    def clip_grad_norm_(self, params, clip):
        self.calls.append("clip (unscales)")
        return torch.tensor(1.0)


@pytest.mark.parametrize("clip", [0.0, 1.0])
def test_update_unscales_before_a_method_adds_gradients_whatever_the_clipping(clip):
    from types import SimpleNamespace

    from peftlab.nonfinite import Guard
    from peftlab.trainer import Trainer

    calls: list[str] = []

    class Recorder(SORSA):
        def on_before_optimizer_step(self, model, step, base_lr):
            calls.append("method")
            return {}

    opt = SimpleNamespace(step=lambda: calls.append("step"), zero_grad=lambda set_to_none: None)
    trainer = SimpleNamespace(model=tiny(), method=Recorder(), step=0, clip=clip, trainable=[], base_lr=1e-3,
                              accelerator=RecordingAccelerator(calls), optimizer=opt, max_steps=1,
                              guard=Guard("fail", 3, torch.device("cpu")),
                              scheduler=SimpleNamespace(step=lambda: None))
    trainer._hooked_clip = lambda step: Trainer._hooked_clip(trainer, step)
    Trainer._update(trainer, {"loss": torch.tensor(1.0)})
    assert calls == ["clip (unscales)" if clip else "unscale", "method", "step"]


@pytest.mark.slow
def test_the_training_loop_tells_sorsa_its_accumulation_steps(runs_dir, monkeypatch):
    from peftlab.config import compose
    from peftlab.train import train

    seen = []
    original = SORSA.on_before_optimizer_step

    def spy(self, model, step, base_lr):
        seen.append(self.grad_accum)
        return original(self, model, step, base_lr)

    monkeypatch.setattr(SORSA, "on_before_optimizer_step", spy)
    overrides = ["model=tiny", "method=sorsa", "trainer.max_steps=2", "trainer.grad_accum=3", "trainer.eval_every=0",
                 "trainer.batch_size=4"]
    train(compose(overrides), overrides=overrides, argv=["peftlab", "train", *overrides], choices={"method": "sorsa"},
          show_progress=False)
    assert seen == [3, 3]
