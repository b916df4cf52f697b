"""AdaLoRA: the budget schedule and the orthogonality term against their equations, parity of the
allocator with PEFT's (same masks and EMAs after the same gradients), option checks, and a real
run that leaves its final ranks in the run folder for ``show`` and ``compare --plot``."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from peftlab.errors import UserError
from peftlab.methods.adalora import FACTORS, AdaLoRA
from peftlab.methods.base import adapted_layers
from tests.conftest import peftlab
from tests.test_method_contract import tiny_bert

TARGETS = ["query", "value"]  # 2 layers x 2 = 4 matrices of the tiny BERT (32 x 32)


def adapted(seed: int = 0, **options):
    model = tiny_bert()
    method = AdaLoRA(target_modules=TARGETS, **options)
    torch.manual_seed(seed)
    method.prepare(model, target_defaults=(), head_modules=())
    return model, method


def lambdas(model) -> dict[str, torch.Tensor]:
    return {n: layer.adapter.lora_E.detach().clone().view(-1) for n, layer in adapted_layers(model).items()}


def factors(model) -> dict[str, torch.nn.Parameter]:
    """Our Q, P, Lambda by ``<layer>.<lora_A|lora_B|lora_E>``."""
    return {f"{n}.{f}": getattr(layer.adapter, f) for n, layer in adapted_layers(model).items() for f in FACTORS}


def drive(params: dict, hook, steps, total: int) -> None:
    """Identical 'training' for any driver: per step the same random gradients (a different scale per
    layer, so the allocation is uneven), an SGD step, then ``hook(step, total)``."""
    for step in steps:
        g = torch.Generator().manual_seed(1000 + step)
        for i, key in enumerate(sorted(params)):
            p = params[key]
            p.grad = torch.randn(p.shape, generator=g) * (1 + 0.25 * ((i // 3) % 4))
            with torch.no_grad():
                p.add_(p.grad, alpha=-0.05)
        hook(step, total)
        for p in params.values():
            p.grad = None


def allocate(model, method):
    return lambda step, total: method.on_after_optimizer_step(model, step, total)


# ----------------------------------------------------------------------------- the schedule


def expected_budget(t: int, total: int, t_i: int, t_f: int, b0: int, bt: int) -> int:
    """b(t) of the paper's cubic schedule, written out here."""
    if t <= t_i:
        return b0
    if t > total - t_f:
        return bt
    return int(bt + (b0 - bt) * (1 - (t - t_i) / (total - t_i - t_f)) ** 3)


def test_masking_follows_the_cubic_budget_schedule():
    """Before t_i nothing is masked; at every delta_t step of the decrease exactly b0 - b(t) triplets
    are zeroed; from T - t_f on the same b0 - b_T stay zeroed after every step."""
    total, t_i, t_f, delta_t, r0, rt = 30, 4, 8, 3, 6, 2
    model, method = adapted(rank=r0, target_rank=rt, t_init=t_i, t_final=t_f, delta_t=delta_t)
    b0, bt = 4 * r0, 4 * rt
    seen = {}

    def record(step, total_steps):
        method.on_after_optimizer_step(model, step, total_steps)
        seen[step] = lambdas(model)

    drive(factors(model), record, range(total), total)
    final_mask = None
    for t in range(total):
        zeros = sum(int((lam == 0).sum()) for lam in seen[t].values())
        if t <= t_i:
            assert zeros == 0, t  # full budget: nothing masked (lambda moved off its zero init)
        elif t < total - t_f:
            if t % delta_t == 0:
                assert zeros == b0 - expected_budget(t, total, t_i, t_f, b0, bt), t
            else:
                assert zeros == 0, t  # between maskings, zeroed lambdas train again
        else:
            assert zeros == b0 - bt, t
            mask = {n: lam == 0 for n, lam in seen[t].items()}
            final_mask = final_mask or mask
            assert all(torch.equal(mask[n], final_mask[n]) for n in mask), t  # the final mask never changes
    assert sum(method.final_ranks(model).values()) == bt
    assert method.final_ranks(model) == {n: int((~m).sum()) for n, m in final_mask.items()}


def test_fractions_are_floored_and_the_importance_emas_follow_their_equations():
    model, method = adapted(rank=4, target_rank=2, t_init=0.1, t_final=0.3)
    assert method.phases(150) == (15, 45) and method.phases(4) == (0, 1) and method.phases(7) == (0, 2)
    layer = next(iter(adapted_layers(model).values())).adapter
    ibar = torch.zeros_like(layer.lora_A)
    ubar = torch.zeros_like(layer.lora_A)

    def check(step, total):
        nonlocal ibar, ubar
        w, grad = layer.lora_A.detach().clone(), layer.lora_A.grad.clone()
        method.on_after_optimizer_step(model, step, total)
        i = (w * grad).abs()
        ibar = 0.85 * ibar + 0.15 * i
        ubar = 0.85 * ubar + 0.15 * (i - ibar).abs()
        key = f"{next(iter(adapted_layers(model)))}.lora_A"
        torch.testing.assert_close(method.sensitivity[key], ibar, rtol=1e-6, atol=0)
        torch.testing.assert_close(method.uncertainty[key], ubar, rtol=1e-6, atol=0)

    drive(factors(model), check, range(3), 100)


def test_orthogonality_term_is_the_mean_frobenius_distance_to_the_identity():
    model, method = adapted(ortho_weight=0.1)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for layer in adapted_layers(model).values():
            layer.adapter.lora_A.normal_(generator=g)
            layer.adapter.lora_B.normal_(generator=g)
    norms = []
    for layer in adapted_layers(model).values():
        q, p = layer.adapter.lora_A.detach(), layer.adapter.lora_B.detach()
        r = q.shape[0]
        norms.append(math.sqrt(float(((q @ q.T - torch.eye(r)) ** 2).sum())))
        norms.append(math.sqrt(float(((p.T @ p - torch.eye(r)) ** 2).sum())))
    term = method.loss_terms(model)["adalora_ortho"]
    assert float(term) == pytest.approx(0.1 * sum(norms) / len(norms), rel=1e-5)
    term.backward()
    assert all(layer.adapter.lora_A.grad.abs().sum() > 0 for layer in adapted_layers(model).values())
    assert AdaLoRA(ortho_weight=0).loss_terms(model) == {}


def test_output_is_s_p_lambda_q_x():
    model, _ = adapted(rank=4, target_rank=2, alpha=6)
    layer = next(iter(adapted_layers(model).values()))
    with torch.no_grad():
        layer.adapter.lora_E.normal_()
    x = torch.randn(5, 32)
    a, b, e = layer.adapter.lora_A, layer.adapter.lora_B, layer.adapter.lora_E.view(-1)
    expected = layer.base(x) + (6 / (4 + 1e-5)) * x @ (b @ torch.diag(e) @ a).T
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- parity with PEFT


def test_same_masks_and_emas_as_peft_after_the_same_gradients():
    from peft import AdaLoraConfig, get_peft_model

    total, options = 14, dict(rank=4, target_rank=2, t_init=2, t_final=4, delta_t=2, alpha=8)
    ours, method = adapted(**options)
    config = AdaLoraConfig(init_r=4, target_r=2, tinit=2, tfinal=4, deltaT=2, total_step=total, lora_alpha=8,
                           target_modules=TARGETS, beta1=0.85, beta2=0.85)
    theirs = get_peft_model(tiny_bert(), config).base_model  # the AdaLoraModel
    allocator = theirs.rankallocator
    peft = dict(theirs.model.named_parameters())  # PEFT's allocator names: <layer>.<factor>.default
    mine = factors(ours)
    with torch.no_grad():  # the same starting point: our initial P and Q, a random Lambda
        for key, p in mine.items():
            if key.endswith("lora_E"):
                p.normal_()
            peft[f"{key}.default"].copy_(p)
    for step in range(total):
        drive(mine, allocate(ours, method), [step], total)
        drive({k: peft[f"{k}.default"] for k in mine}, lambda s, t: theirs.update_and_allocate(s), [step], total)
        for key, p in mine.items():
            assert torch.equal(p, peft[f"{key}.default"]), (step, key)  # so the same triplets were zeroed
            if f"{key}.default" in allocator.exp_avg_ipt:
                assert torch.equal(method.sensitivity[key], allocator.exp_avg_ipt[f"{key}.default"]), (step, key)
                assert torch.equal(method.uncertainty[key], allocator.exp_avg_unc[f"{key}.default"]), (step, key)
            else:
                assert key not in method.sensitivity, (step, key)  # both reset at T - t_f
    pattern = {k: list(v) for k, v in theirs.peft_config["default"].rank_pattern.items()}
    assert {f"{n}.lora_E.default": m.tolist() for n, m in method.masks.items()} == pattern
    ranks = method.final_ranks(ours)
    assert sum(ranks.values()) == 4 * 2 and len(set(ranks.values())) > 1  # uneven: the test means something


# ----------------------------------------------------------------------------- state and options


def test_state_round_trip_continues_identically():
    """EMAs and masks through state_dict / load_state_dict (as safetensors): a copy continues exactly
    like the original, through the later maskings and the final phase."""
    from safetensors.torch import load, save

    options = dict(rank=4, target_rank=2, t_init=1, t_final=3, delta_t=2)
    model, method = adapted(**options)
    drive(factors(model), allocate(model, method), range(5), 12)
    twin_model = copy.deepcopy(model)
    twin = AdaLoRA(target_modules=TARGETS, **options)
    twin.load_state_dict(load(save({k: v.contiguous() for k, v in method.state_dict().items()})))
    assert any(k.startswith("sensitivity.") for k in method.state_dict()) and method.masks
    drive(factors(model), allocate(model, method), range(5, 12), 12)
    drive(factors(twin_model), allocate(twin_model, twin), range(5, 12), 12)
    assert all(torch.equal(a, b) for a, b in zip(lambdas(model).values(), lambdas(twin_model).values()))
    assert method.final_ranks(model) == twin.final_ranks(twin_model)


@pytest.mark.parametrize("options, needle", [
    (dict(rank=8, target_rank=12), "method.target_rank=12"),
    (dict(t_init=0.5, t_final=0.5), "method.t_init=0.5"),
    (dict(t_init=1.5), "method.t_init=1.5"),
    (dict(t_final=-3), "method.t_final=-3"),
    (dict(delta_t=0), "method.delta_t=0"),
    (dict(beta1=1.0), "method.beta1=1.0"),
    (dict(ortho_weight=-1), "method.ortho_weight=-1"),
])
def test_bad_options_are_refused_at_construction(options, needle):
    with pytest.raises(UserError, match=needle.replace(".", r"\.")):
        AdaLoRA(**options)


def test_absolute_phases_longer_than_the_run_are_refused_before_training():
    model, method = adapted(t_init=500, t_final=1500)
    with pytest.raises(UserError, match="trainer.max_steps=150"):
        method.on_train_begin(model, total_steps=150)
    method.on_train_begin(model, total_steps=2500)


# ----------------------------------------------------------------------------- a real run


@pytest.mark.slow
def test_a_run_records_its_final_ranks_for_show_and_compare(runs_dir, tmp_path):
    from peftlab import runs

    args = ("model=tiny", "trainer.max_steps=6", "trainer.eval_every=0", "trainer.batch_size=8", "-q")
    for method in ("adalora", "lora"):
        result = peftlab("train", *args, f"method={method}", f"name={method}")
        assert result.returncode == 0, result.stderr
    ada, lora = runs.resolve("adalora", runs_dir), runs.resolve("lora", runs_dir)
    ranks = json.loads(ada.ranks_path.read_text())["ranks"]
    assert len(ranks) == 12 and sum(ranks.values()) == 12 * 8 and max(ranks.values()) <= 12
    assert not lora.ranks_path.exists()  # fixed ranks: no file
    shown = peftlab("show", "adalora").stdout
    assert "final ranks (96 over 12 matrices" in shown and "attention.self.query" in shown
    plots = tmp_path / "plots"
    result = peftlab("compare", str(runs_dir), "--plot", str(plots))
    assert result.returncode == 0, result.stderr
    assert (plots / "ranks.png").stat().st_size > 0
