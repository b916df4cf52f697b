"""Regularizers: each term and its gradient against the equations computed here, zero where it
should be, the pretrained outputs computed once per micro-batch, and the capability check."""

from __future__ import annotations

import copy

import pytest
import torch

from peftlab.config import build, compose, config_dir
from peftlab.errors import UserError
from peftlab.methods.base import adapted_layers, factor_pairs, merge, trainable_parameters
from peftlab.models import architecture
from peftlab.regularizers import ba_lora, factors, kl, nuclear
from peftlab.regularizers.base import RegularizerContext, add_terms, fitting_methods
from peftlab.tasks.classification import Classification
from tests.test_method_contract import METHODS, adapt, batch, tiny_bert, tiny_llama


def grad_of(fn, x: torch.Tensor) -> torch.Tensor:
    x = x.detach().clone().float().requires_grad_(True)
    fn(x).backward()
    return x.grad.double()


def finite_difference(fn, x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Central differences of a scalar function (evaluated in fp64 inputs cast by the function)."""
    x = x.detach().double()
    out = torch.zeros_like(x)
    flat = out.view(-1)
    for i in range(x.numel()):
        step = torch.zeros_like(x).view(-1)
        step[i] = eps
        step = step.view_as(x)
        flat[i] = (float(fn(x + step)) - float(fn(x - step))) / (2 * eps)
    return out


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)  # terms run in fp32


# --------------------------------------------------------------------------- BA-LoRA, classifiers


def test_classifier_consistency_value_gradient_and_zero():
    z, z0 = rand(6, 4, seed=1), rand(6, 4, seed=2)
    expected = ((z / z.norm(dim=1, keepdim=True) - z0 / z0.norm(dim=1, keepdim=True)) ** 2).mean()
    assert float(ba_lora.classifier_consistency(z, z0)) == pytest.approx(float(expected), rel=1e-5)
    fd = finite_difference(lambda x: ((x / x.norm(dim=1, keepdim=True)
                                       - z0 / z0.norm(dim=1, keepdim=True)) ** 2).mean(), z)
    assert torch.allclose(grad_of(lambda x: ba_lora.classifier_consistency(x, z0.float()), z), fd, atol=1e-5)
    same = grad_of(lambda x: ba_lora.classifier_consistency(x, 3 * z.float()), z)  # same direction: zero
    assert float(ba_lora.classifier_consistency(z, 3 * z)) == pytest.approx(0, abs=1e-7)
    assert same.abs().max() < 1e-6


def test_classifier_diversity_matches_the_covariance_formula_and_its_gradient():
    z = rand(8, 3, seed=3)
    n, c = z.shape
    zc = z - z.mean(0)
    cov = zc.T @ zc / (n - 1)
    off = cov - torch.diag(torch.diag(cov))
    assert float(ba_lora.classifier_diversity(z)) == pytest.approx(float((off ** 2).sum() / c), rel=1e-5)
    analytic = 4 * zc @ off / (c * (n - 1))
    assert torch.allclose(grad_of(ba_lora.classifier_diversity, z), analytic, atol=1e-5)


def test_classifier_diversity_is_zero_for_uncorrelated_logits():
    basis = torch.linalg.qr(torch.cat([torch.ones(8, 1, dtype=torch.float64), rand(8, 3, seed=5)], 1))[0][:, 1:]  # columns ⟂ 1
    z = basis * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64) + 5  # centred columns mutually orthogonal: diagonal covariance
    assert float(ba_lora.classifier_diversity(z)) == pytest.approx(0, abs=1e-7)
    assert grad_of(ba_lora.classifier_diversity, z).abs().max() < 1e-5


def test_singular_value_term_is_the_intended_ratio_with_its_gradient():
    z, k = rand(7, 5, seed=6), 3
    u, s, vh = torch.linalg.svd(z, full_matrices=False)
    assert float(ba_lora.singular_value_ratio(z, k)) == pytest.approx(float(-s[:k].sum() / s.sum()), rel=1e-5)
    d_top, d_all = u[:, :k] @ vh[:k], u @ vh  # d sigma_i / dz = u_i v_i^T
    analytic = -(d_top * s.sum() - s[:k].sum() * d_all) / s.sum() ** 2
    assert torch.allclose(grad_of(lambda x: ba_lora.singular_value_ratio(x, k), z), analytic, atol=1e-5)
    low_rank = rand(7, 2, seed=7) @ rand(2, 5, seed=8)  # rank 2 <= k: all the mass in the top k
    assert float(ba_lora.singular_value_ratio(low_rank, k)) == pytest.approx(-1, abs=1e-5)


# --------------------------------------------------------------------------- BA-LoRA, causal LMs and KL


def test_lm_consistency_is_summed_kl_over_sequences_with_softmax_gradient():
    z, z0, sequences = rand(10, 6, seed=9), rand(10, 6, seed=10), 4
    p, p0 = z.softmax(-1), z0.softmax(-1)
    expected = (p0 * (p0.log() - p.log())).sum() / sequences
    assert float(ba_lora.lm_consistency(z, z0, sequences)) == pytest.approx(float(expected), rel=1e-5)
    analytic = (p - p0) / sequences
    assert torch.allclose(grad_of(lambda x: ba_lora.lm_consistency(x, z0.float(), sequences), z), analytic, atol=1e-6)
    assert float(ba_lora.lm_consistency(z, z + 2.0, sequences)) == pytest.approx(0, abs=1e-6)  # same P
    assert grad_of(lambda x: ba_lora.lm_consistency(x, z.float(), sequences), z).abs().max() < 1e-6


def test_lm_diversity_is_minus_mean_entropy_with_its_gradient():
    z = rand(5, 7, seed=11)
    p = z.softmax(-1)
    h = -(p * p.log()).sum(-1)
    assert float(ba_lora.lm_diversity(z)) == pytest.approx(float(-h.mean()), rel=1e-5)
    analytic = p * (p.log() + h[:, None]) / z.shape[0]  # d(-H)/dz_j = p_j (log p_j + H)
    assert torch.allclose(grad_of(ba_lora.lm_diversity, z), analytic, atol=1e-6)
    assert grad_of(ba_lora.lm_diversity, torch.zeros(3, 7, dtype=torch.float64)).abs().max() < 1e-7  # uniform: maximal entropy


def test_kl_to_pretrained_is_a_row_mean_with_softmax_gradient():
    z, z0 = rand(6, 5, seed=12), rand(6, 5, seed=13)
    p, p0 = z.softmax(-1), z0.softmax(-1)
    assert float(kl.mean_kl(z, z0)) == pytest.approx(float((p0 * (p0.log() - p.log())).sum() / 6), rel=1e-5)
    assert torch.allclose(grad_of(lambda x: kl.mean_kl(x, z0.float()), z), (p - p0) / 6, atol=1e-6)
    assert float(kl.mean_kl(z, z)) == pytest.approx(0, abs=1e-6)


# --------------------------------------------------------------------------- factors and weight changes


def test_orthonormality_gradient_and_zero_at_orthonormal_factors():
    b, a = rand(9, 3, seed=14), rand(3, 11, seed=15)
    eye = torch.eye(3, dtype=torch.float64)
    gb, ga = b.T @ b - eye, a @ a.T - eye
    assert float(factors.orthonormality([(b, a)])) == pytest.approx(float((gb.norm() + ga.norm()) / 2), rel=1e-5)
    # d ||M M^T - I||_F / dM = 2 (M M^T - I) M / ||M M^T - I||_F; the mean over the two halves it
    assert torch.allclose(grad_of(lambda x: factors.orthonormality([(b.float(), x)]), a), ga @ a / ga.norm(), atol=1e-5)
    assert torch.allclose(grad_of(lambda x: factors.orthonormality([(x, a.float())]), b), b @ gb / gb.norm(), atol=1e-5)
    q_b = torch.linalg.qr(b)[0]
    q_a = torch.linalg.qr(a.T)[0].T
    assert float(factors.orthonormality([(q_b, q_a)])) == pytest.approx(0, abs=1e-5)


def test_nuclear_norm_gradient_and_the_sketch_on_low_rank_changes():
    full_rank = rand(20, 30, seed=18)
    u, s, vh = torch.linalg.svd(full_rank, full_matrices=False)
    assert float(nuclear.nuclear_norm(full_rank)) == pytest.approx(float(s.sum()), rel=1e-5)
    assert torch.allclose(grad_of(nuclear.nuclear_norm, full_rank), u @ vh, atol=1e-4)  # d ||X||_* = U V^T
    d = rand(20, 3, seed=16) @ rand(3, 30, seed=17)
    u, s, vh = torch.linalg.svd(d, full_matrices=False)
    r = 3
    # rank 3 <= q = 5: the sketch is exact, and its gradient is the minimal subgradient U_r V_r^T
    torch.manual_seed(0)
    assert float(nuclear.sketched_nuclear_norm(d.float(), q=5)) == pytest.approx(float(s.sum()), rel=1e-4)
    torch.manual_seed(0)
    assert torch.allclose(grad_of(lambda x: nuclear.sketched_nuclear_norm(x, q=5), d), u[:, :r] @ vh[:r], atol=1e-4)
    torch.manual_seed(0)  # a lower bound when the change has more rank than the sketch
    assert float(nuclear.sketched_nuclear_norm(full_rank.float(), q=5)) < float(nuclear.nuclear_norm(full_rank))
    zero = torch.zeros(20, 30, dtype=torch.float64)  # LoRA at step 0: finite value and gradient
    assert torch.isfinite(grad_of(lambda x: nuclear.sketched_nuclear_norm(x, q=5), zero)).all()
    assert grad_of(nuclear.nuclear_norm, zero).abs().max() == 0  # the minimal subgradient at 0
    assert torch.allclose(grad_of(nuclear.nuclear_norm, d), u[:, :r] @ vh[:r], atol=1e-4)  # rank-deficient: U_r V_r^T


@pytest.mark.parametrize("name", ["lora", "pissa", "sorsa", "dora", "miss-bat", "full"])
def test_weight_changes_are_the_effective_weight_minus_the_pretrained_one(name):
    model = tiny_bert()
    pretrained = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    if name == "miss-bat":  # Bone's block-affine mode: a change that depends on W itself
        method = build(compose(["method=miss", "method.mode=bat"]).method)
        method.prepare(model, target_defaults=architecture("bert").targets, head_modules=architecture("bert").heads)
    else:
        method = adapt(name, model)
    assert all(float(d.abs().max()) < 1e-5 for d in method.weight_changes(model).values())  # nothing learnt yet
    with torch.no_grad():
        for p in trainable_parameters(model).values():
            p.add_(0.01 * torch.randn_like(p))
    changes = method.weight_changes(model)
    merged = copy.deepcopy(model)
    merge(merged)
    for lname, layer in adapted_layers(merged).items():
        assert torch.allclose(changes[lname], layer.base.weight - pretrained[lname], atol=1e-5)
    if name == "full":
        key = next(k for k in changes if k.endswith("query.weight"))
        assert torch.allclose(changes[key], dict(model.named_parameters())[key] - pretrained[key[:-len(".weight")]])


# --------------------------------------------------------------------------- capabilities


@pytest.mark.parametrize("name", METHODS)
def test_methods_declare_factors_exactly_when_their_adapters_have_them(name):
    model = tiny_bert()
    method = adapt(name, model)
    pairs = factor_pairs(model)
    layers = adapted_layers(model)
    if "factors" in method.provides:
        assert layers and set(pairs) == set(layers)
        for lname, (b, a) in pairs.items():
            base = layers[lname].base
            assert b.shape[0] == base.out_features and a.shape[1] == base.in_features and b.shape[1] == a.shape[0]
            assert b.requires_grad and a.requires_grad
    else:
        assert not pairs
    assert {"reference_outputs", "weight_change"} <= method.provides


def test_a_regularizer_on_a_method_without_factors_names_the_methods_it_fits():
    cfg = compose(["method=full", "regularizer=[orthonormal]"])
    reg = build(cfg.regularizer.orthonormal, name="orthonormal")
    with pytest.raises(UserError) as err:
        reg.check(build(cfg.method))
    message = str(err.value)
    assert "\n" not in message and "orthonormal" in message and "factor" in message
    fits = fitting_methods(reg.needs)
    assert {"lora", "pissa", "sorsa"} <= set(fits) and "full" not in fits
    assert "method=" + ", ".join(fits) in message
    shipped = sorted(p.stem for p in (config_dir() / "method").glob("*.yaml"))
    assert fitting_methods(frozenset({"reference_outputs"})) == shipped  # every method has a pretrained function


def test_weights_and_options_are_checked():
    with pytest.raises(UserError, match=r"regularizer.kl.weight=-1 .* >= 0"):
        kl.KLToPretrained("kl", weight=-1)
    with pytest.raises(UserError, match="regularizer.s.k=0"):
        ba_lora.SingularValues("s", k=0)
    with pytest.raises(UserError, match="regularizer.n.sample=0"):
        nuclear.NuclearNorm("n", sample=0)


# --------------------------------------------------------------------------- the shared reference forward


class Counter:
    def __init__(self, model):
        self.calls = 0
        model.register_forward_pre_hook(lambda *_: self.bump())

    def bump(self):
        self.calls += 1


def test_reference_outputs_are_the_pretrained_model_and_computed_once_per_micro_batch():
    model = tiny_bert()
    pretrained = copy.deepcopy(model)
    method = adapt("pissa", model)
    with torch.no_grad():
        for p in trainable_parameters(model).values():
            p.add_(0.05 * torch.randn_like(p))
    task, data = Classification(), batch()
    regs = [ba_lora.Consistency("cons", 1.0), kl.KLToPretrained("kl", 1.0), ba_lora.Diversity("div", 1.0),
            ba_lora.SingularValues("svd", 0.0), kl.KLToPretrained("kl_control", 0.0)]
    model.train()
    loss, out = task.loss(model, data)
    counter = Counter(model)
    ctx = RegularizerContext(model, method, data, out, task)
    total, logged = add_terms(regs, ctx)
    assert counter.calls == 1  # four reference terms (two of weight 0), one extra forward
    z0 = pretrained(**{k: v for k, v in data.items() if k != "labels"}).logits
    assert torch.allclose(ctx.reference_outputs.logits, z0, atol=1e-5)
    assert float(logged["reg/kl"]) == pytest.approx(float(kl.mean_kl(out.logits, z0)), rel=1e-4)
    assert float(logged["reg/kl_control"]) > 0 and float(logged["reg/kl_control/weighted"]) == 0
    expected = sum(float(logged[f"reg/{n}"]) for n in ("cons", "kl", "div"))
    assert float(total) == pytest.approx(expected, rel=1e-5)
    total.backward()  # the parameters were restored after the reference forward: the graph is intact
    assert model.training and all(p.grad is not None for p in trainable_parameters(model).values())
    counter.calls = 0
    add_terms([ba_lora.Diversity("div", 1.0)], RegularizerContext(model, method, data, out, task))
    assert counter.calls == 0  # no term asked: no extra forward


def test_lm_terms_use_response_tokens_and_the_lm_forms():
    from peftlab.tasks.causal_lm import CausalLM, response_logits

    model = tiny_llama()
    pretrained = copy.deepcopy(model)
    method = adapt("lora", model)
    with torch.no_grad():
        for p in trainable_parameters(model).values():
            p.add_(0.05 * torch.randn_like(p))
    data = batch("causal_lm")
    data["labels"][:, :5] = -100  # a prompt: no loss there
    task = CausalLM(metric="loss")
    _, out = task.loss(model, data)
    ctx = RegularizerContext(model, method, data, out, task)
    z0, _ = response_logits(pretrained, data)
    p, p0 = out.logits.float().softmax(-1), z0.softmax(-1)
    assert ctx.kind == "causal_lm" and out.logits.shape[0] == int((data["labels"][:, 1:] != -100).sum())
    expected = (p0 * (p0.log() - p.log())).sum() / data["input_ids"].shape[0]
    assert float(ba_lora.Consistency("c").term(ctx)) == pytest.approx(float(expected), rel=1e-4)
    entropy = -(p * p.log()).sum(-1)
    assert float(ba_lora.Diversity("d").term(ctx)) == pytest.approx(float(-entropy.mean()), rel=1e-4)


def test_ba_lora_is_pissa_with_the_papers_three_terms():
    cfg = compose(["method=ba_lora"])
    assert cfg.method._target_ == compose(["method=pissa"]).method._target_
    weights = {name: float(node.weight) for name, node in cfg.regularizer.items()}
    assert weights == {"ba_consistency": 1e-4, "ba_diversity": 3e-4, "ba_svd": 1e-4}
    assert int(cfg.regularizer.ba_svd.k) == 3
    assert list(compose(["method=ba_lora", "regularizer.ba_svd.weight=0"]).regularizer.ba_svd.items())
    assert float(compose(["method=ba_lora", "regularizer.ba_svd.weight=0"]).regularizer.ba_svd.weight) == 0


# --------------------------------------------------------------------------- end to end


LM_ARGS = ("model=tiny_lm", "dataset=arith", "task.metric=loss", "trainer.metric=loss", "trainer.batch_size=4",
           "task.generate_on_validation=false", "trainer.eval_batch_size=64", "task.max_new_tokens=4")


@pytest.mark.parametrize("args", [pytest.param(("model=tiny",), id="classifier"),
                                  pytest.param(LM_ARGS, id="causal_lm", marks=pytest.mark.slow)])
def test_ba_lora_trains_and_logs_each_term_raw_and_weighted(runs_dir, args):
    from peftlab import runs
    from tests.conftest import peftlab

    result = peftlab("train", *args, "method=ba_lora", "+regularizer=[orthonormal]", "trainer.max_steps=2",
                     "trainer.log_every=1", "trainer.grad_accum=2", "regularizer.ba_svd.weight=0.5", "-q")
    assert result.returncode == 0, result.stderr
    (run,) = runs.list_runs(runs_dir)
    lines = [r for r in run.metrics() if r["split"] == "train"]
    names = ("ba_consistency", "ba_diversity", "ba_svd", "orthonormal")
    weights = {"ba_consistency": 1e-4, "ba_diversity": 3e-4, "ba_svd": 0.5, "orthonormal": 1e-3}
    for r in lines:
        for n in names:
            assert r[f"reg/{n}/weighted"] == pytest.approx(weights[n] * r[f"reg/{n}"], rel=1e-5, abs=1e-12)
        assert r["loss"] == pytest.approx(r["loss/task"] + sum(r[f"reg/{n}/weighted"] for n in names), rel=1e-5)
    assert lines[0]["reg/ba_consistency"] == pytest.approx(0, abs=1e-6)  # step 1's forward is the pretrained one
    assert -1 <= lines[-1]["reg/ba_svd"] < 0


def test_compare_shows_each_term_of_the_last_training_line_as_a_column():
    from peftlab.compare.formats import columns, to_csv
    from peftlab.compare.grouping import Row
    from peftlab.metrics import regularizer_terms

    records = [{"split": "train", "step": 1, "reg/orthonormal": 3.0, "reg/orthonormal/weighted": 0.003},
               {"split": "validation", "step": 1, "loss": 1.0},
               {"split": "train", "step": 2, "reg/orthonormal": 2.5, "reg/orthonormal/weighted": 0.0025,
                "reg/kl_pretrained": 0.1},
               {"split": "test", "step": 2, "accuracy": 0.5}]
    assert regularizer_terms(records) == {"reg/orthonormal": 2.5, "reg/kl_pretrained": 0.1}  # raw, last line
    rows = [Row(key=(("w", "0"),), params={"w": "0"}, records=[], metric="accuracy", higher_is_better=True,
                regularizers={"reg/orthonormal": 2.5}),
            Row(key=(("w", "1"),), params={"w": "1"}, records=[], metric="accuracy", higher_is_better=True,
                regularizers={"reg/orthonormal": 1.5, "reg/kl_pretrained": 0.1})]
    headers = [c.header for c in columns(rows)]
    assert "reg/orthonormal" in headers and "reg/kl_pretrained" in headers
    cells = {c.header: c.cell(rows[0]) for c in columns(rows)}
    assert cells["reg/orthonormal"] == "2.5" and cells["reg/kl_pretrained"] == "-"
    head = to_csv(rows).splitlines()[0]
    assert "reg/orthonormal" in head.split(",") and "reg/kl_pretrained" in head.split(",")
