"""PiSSA, MiLoRA, OLoRA and SVFit: the equations, then parity with PEFT.

Spec tests check each init against an SVD/QR computed here from the equations
(sections 3, 4, 5), up to the sign freedom of singular vectors. Parity tests
(PEFT is a test-only dependency) adapt the same tiny BERT on both sides and
compare the initial factors, the rewritten base weights and the logits after
three identical AdamW steps.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from peftlab.errors import UserError
from peftlab.methods.base import adapted_layers, merge, trainable_parameters, unmerge
from peftlab.methods.milora import MiLoRA
from peftlab.methods.olora import OLoRA
from peftlab.methods import pissa as pissa_module
from peftlab.methods.pissa import PiSSA
from peftlab.methods.svfit import SVFit

TARGETS = ["fc1", "fc2"]


class Net(nn.Module):
    """Two Linears, one tall (24 x 10) and one wide (12 x 24), and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(10, 24)
        self.fc2 = nn.Linear(24, 12)
        self.head = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


def make_net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net()


def prepared(method, seed: int = 0):
    net = make_net(seed)
    original = copy.deepcopy(net)
    method.prepare(net, target_defaults=[], head_modules=["head"])
    return original, net


def svd(weight: torch.Tensor):
    U, S, Vh = torch.linalg.svd(weight.double(), full_matrices=False)
    return U, S, Vh.T  # W = U diag(S) V^T


def align(got: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    """Flip each column of ``got`` to the sign of the matching column of ``want``."""
    signs = torch.sign((got * want).sum(0))
    signs[signs == 0] = 1
    return got * signs


# --------------------------------------------------------------------------- spec: PiSSA


@pytest.mark.parametrize("rank,alpha", [(4, None), (4, 8.0), (3, 1.0)])
def test_pissa_factors_are_the_scaled_top_triplets(rank, alpha):
    method = PiSSA(rank=rank, alpha=alpha, target_modules=TARGETS)
    original, net = prepared(method)
    s = (rank if alpha is None else alpha) / rank
    for name in TARGETS:
        W = getattr(original, name).weight.detach()
        U, S, V = svd(W)
        adapter = getattr(net, name).adapter
        B, A = adapter.lora_B.detach().double(), adapter.lora_A.detach().double()
        root = torch.sqrt(S[:rank] / s)
        want_B = U[:, :rank] * root
        want_A = (V[:, :rank] * root).T
        signs = torch.sign((B * want_B).sum(0))
        torch.testing.assert_close(B * signs, want_B, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(A * signs[:, None], want_A, atol=1e-5, rtol=1e-5)
        # The residual is the bottom-(k - r) part of W.
        bottom = U[:, rank:] @ torch.diag(S[rank:]) @ V[:, rank:].T
        torch.testing.assert_close(getattr(net, name).base.weight.detach().double(), bottom, atol=1e-5, rtol=0)
        assert adapter.expected_trainable() == rank * (W.shape[0] + W.shape[1])


@pytest.mark.parametrize("method", [
    PiSSA(rank=4, target_modules=TARGETS),
    PiSSA(rank=4, alpha=16, rslora=True, target_modules=TARGETS),
    PiSSA(rank=4, svd_niter=4, target_modules=TARGETS),
    MiLoRA(rank=4, dropout=0.0, target_modules=TARGETS),
    OLoRA(rank=4, target_modules=TARGETS),
    OLoRA(rank=4, alpha=3, target_modules=TARGETS),
    SVFit(rank=4, target_modules=TARGETS),
    SVFit(energy=0.9, target_modules=TARGETS),
], ids=["pissa", "pissa-rslora", "pissa-niter4", "milora", "olora", "olora-alpha3", "svfit", "svfit-energy"])
def test_init_reproduces_the_pretrained_output(method):
    original, net = prepared(method)
    x = torch.randn(7, 10)
    with torch.no_grad():
        want = original(x)
        torch.testing.assert_close(net(x), want, atol=1e-5, rtol=1e-5)
        with method.reference(net):
            torch.testing.assert_close(net(x), want, atol=1e-5, rtol=1e-5)
        merge(net)
        torch.testing.assert_close(net(x), want, atol=1e-5, rtol=1e-5)
        unmerge(net)
        torch.testing.assert_close(net(x), want, atol=1e-5, rtol=1e-5)
    layers = adapted_layers(net)
    assert set(layers) == set(TARGETS)
    for layer in layers.values():
        assert layer.adapter.rewrites_base
    trainable = trainable_parameters(net)
    assert all(n.startswith(("head.", "fc1.adapter.", "fc2.adapter.")) for n in trainable)
    adapter_count = sum(p.numel() for n, p in trainable.items() if ".adapter." in n)
    assert adapter_count == sum(layer.adapter.expected_trainable() for layer in layers.values())


def test_pissa_alpha_defaults_to_rank_and_rejects_bad_options():
    assert PiSSA(rank=16).scale == 1.0
    assert MiLoRA(rank=16).scale == 1.0
    assert OLoRA(rank=8).scale == 2.0
    with pytest.raises(UserError, match="svd_niter"):
        PiSSA(svd_niter=-1)
    with pytest.raises(UserError, match="svd_niter"):
        MiLoRA(svd_niter=4)
    with pytest.raises(UserError, match="init"):
        PiSSA(init="gaussian")
    with pytest.raises(UserError, match="energy"):
        SVFit(energy=1.5)
    with pytest.raises(UserError, match="rank"):
        prepared(PiSSA(rank=11, target_modules=TARGETS))  # fc1 is 24 x 10


# --------------------------------------------------------------------------- spec: MiLoRA


def test_milora_uses_the_smallest_triplets():
    rank = 3
    method = MiLoRA(rank=rank, alpha=6.0, dropout=0.0, target_modules=TARGETS)
    original, net = prepared(method)
    s = 6.0 / rank
    for name in TARGETS:
        W = getattr(original, name).weight.detach()
        U, S, V = svd(W)
        adapter = getattr(net, name).adapter
        B, A = adapter.lora_B.detach().double(), adapter.lora_A.detach().double()
        root = torch.sqrt(S[-rank:] / s)
        want_B = U[:, -rank:] * root
        signs = torch.sign((B * want_B).sum(0))
        torch.testing.assert_close(B * signs, want_B, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(A * signs[:, None], (V[:, -rank:] * root).T, atol=1e-5, rtol=1e-5)
        top = U[:, :-rank] @ torch.diag(S[:-rank]) @ V[:, :-rank].T
        torch.testing.assert_close(getattr(net, name).base.weight.detach().double(), top, atol=1e-5, rtol=0)
        # The adapter's singular values are the smallest ones of W.
        torch.testing.assert_close(torch.linalg.svdvals(s * B @ A)[:rank], S[-rank:], atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- spec: OLoRA


def test_olora_b_is_orthonormal_and_ba_is_the_qr_head():
    rank = 4
    method = OLoRA(rank=rank, alpha=8, target_modules=TARGETS)
    original, net = prepared(method)
    for name in TARGETS:
        W = getattr(original, name).weight.detach()
        adapter = getattr(net, name).adapter
        B, A = adapter.lora_B.detach(), adapter.lora_A.detach()
        torch.testing.assert_close(B.T @ B, torch.eye(rank), atol=1e-5, rtol=0)
        assert torch.all(torch.tril(A, diagonal=-1) == 0)  # R is upper triangular
        Q, R = torch.linalg.qr(W.double())
        torch.testing.assert_close(B.double() @ A.double(), Q[:, :rank] @ R[:rank], atol=1e-5, rtol=1e-5)
        want_base = W - adapter.scale * B @ A
        torch.testing.assert_close(getattr(net, name).base.weight.detach(), want_base, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- spec: SVFit


def test_svfit_trains_r_singular_values():
    rank = 5
    method = SVFit(rank=rank, target_modules=TARGETS)
    original, net = prepared(method)
    for name in TARGETS:
        W = getattr(original, name).weight.detach()
        U, S, V = svd(W)
        adapter = getattr(net, name).adapter
        assert [n for n, p in adapter.named_parameters() if p.requires_grad] == ["sigma"]
        assert adapter.sigma.numel() == rank == adapter.expected_trainable()
        torch.testing.assert_close(adapter.sigma.detach().double(), S[:rank], atol=1e-5, rtol=1e-5)
        buffers = dict(adapter.named_buffers())
        assert set(buffers) == {"U_r", "V_r"} and not any(b.requires_grad for b in buffers.values())
        assert {"U_r", "V_r", "sigma"} <= set(adapter.state_dict())
        torch.testing.assert_close(align(adapter.U_r.double(), U[:, :rank]), U[:, :rank], atol=1e-5, rtol=0)
        torch.testing.assert_close(align(adapter.V_r.double(), V[:, :rank]), V[:, :rank], atol=1e-5, rtol=0)
        rest = U[:, rank:] @ torch.diag(S[rank:]) @ V[:, rank:].T
        torch.testing.assert_close(getattr(net, name).base.weight.detach().double(), rest, atol=1e-5, rtol=0)
        # delta_weight is the change to the rewritten base, U_r diag(sigma) V_r^T.
        torch.testing.assert_close(adapter.delta_weight().double(), W.double() - rest, atol=1e-5, rtol=0)
    trainable = trainable_parameters(net)
    assert sum(p.numel() for n, p in trainable.items() if ".adapter." in n) == rank * len(TARGETS)


def test_svfit_delta_forward_matches_delta_weight_after_a_change():
    method = SVFit(rank=4, target_modules=TARGETS)
    _, net = prepared(method)
    adapter = net.fc1.adapter
    with torch.no_grad():
        adapter.sigma.mul_(torch.linspace(0.5, 2.0, 4))
    x = torch.randn(6, 10)
    torch.testing.assert_close(adapter.delta_forward(x), x @ adapter.delta_weight().T, atol=1e-5, rtol=1e-5)


def test_svfit_energy_picks_the_formula_rank():
    # Weights with a known, geometrically decaying spectrum.
    torch.manual_seed(1)
    net = Net()
    spectra = {}
    with torch.no_grad():
        for name in TARGETS:
            layer = getattr(net, name)
            m, n = layer.weight.shape
            k = min(m, n)
            U = torch.linalg.qr(torch.randn(m, k)).Q
            V = torch.linalg.qr(torch.randn(n, k)).Q
            sigma = 3.0 * 0.7 ** torch.arange(k, dtype=torch.float32)
            layer.weight.copy_(U @ torch.diag(sigma) @ V.T)
            spectra[name] = sigma
    original = copy.deepcopy(net)
    energy = 0.99
    method = SVFit(energy=energy, target_modules=TARGETS)
    method.prepare(net, target_defaults=[], head_modules=["head"])
    for name, sigma in spectra.items():
        total = float((sigma.double() ** 2).sum())
        want, acc = None, 0.0
        for i, value in enumerate(sigma.double().tolist(), start=1):
            acc += value * value
            if acc / total >= energy:
                want = i
                break
        assert 1 < want < len(sigma)  # the test spectrum makes the choice non-trivial
        adapter = getattr(net, name).adapter
        assert adapter.rank == want == adapter.sigma.numel() == adapter.expected_trainable()
    x = torch.randn(5, 10)
    with torch.no_grad():
        torch.testing.assert_close(net(x), original(x), atol=1e-5, rtol=1e-5)


def test_bf16_forward_is_finite():
    for method in (PiSSA(rank=4, target_modules=TARGETS), MiLoRA(rank=4, target_modules=TARGETS),
                   OLoRA(rank=4, target_modules=TARGETS), SVFit(rank=4, target_modules=TARGETS)):
        net = make_net().to(torch.bfloat16)
        method.prepare(net, target_defaults=[], head_modules=["head"])
        for layer in adapted_layers(net).values():
            # the base is bf16; the adapter stays fp32, as PEFT keeps it (optimizer steps are not rounded away)
            assert layer.base.weight.dtype == torch.bfloat16
            assert all(t.dtype == torch.float32 for t in layer.adapter.state_dict().values())
        with torch.no_grad():
            out = net(torch.randn(4, 10, dtype=torch.bfloat16))
        assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


# --------------------------------------------------------------------------- parity with PEFT

RANK, ALPHA = 4, 8  # s = 2, so the division of sigma by s is exercised


def tiny_bert():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=3,
    )
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(config)


@pytest.fixture
def seeded_svd_lowrank(monkeypatch):
    """Reseed right before every randomized SVD (``svd_lowrank``, ``randomized_triplets``), on both sides.

    PEFT does not seed ``svd_lowrank``: it draws its random test matrix from the
    global generator, after ``nn.Linear`` has drawn lora_A/lora_B's throwaway
    kaiming init for that layer (peftlab draws nothing there). Seeding once before
    each side's init would therefore give different matrices; reseeding at each
    call gives both sides the same matrix for the same layer.
    """
    peft_layer = pytest.importorskip("peft.tuners.lora.layer")

    def seeded(original):
        def call(*args, **kwargs):
            torch.manual_seed(1234)
            return original(*args, **kwargs)
        return call

    monkeypatch.setattr(torch, "svd_lowrank", seeded(torch.svd_lowrank))
    monkeypatch.setattr(peft_layer, "svd_lowrank", seeded(torch.svd_lowrank))
    monkeypatch.setattr(pissa_module, "randomized_triplets", seeded(pissa_module.randomized_triplets))


def peft_pair(init: str):
    peft = pytest.importorskip("peft")
    base = tiny_bert()
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    if init == "olora":
        method = OLoRA(rank=RANK, alpha=ALPHA, target_modules=["query", "value"])
    else:
        niter = int(init.split("_niter_")[1]) if "_niter_" in init else None
        method = PiSSA(rank=RANK, alpha=ALPHA, svd_niter=niter, target_modules=["query", "value"])
    method.prepare(ours, target_defaults=[], head_modules=["classifier"])
    config = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=["query", "value"],
                             init_lora_weights=init, modules_to_save=["classifier"])
    theirs = peft.get_peft_model(theirs, config)
    return base, ours, theirs


def peft_layers(theirs) -> dict:
    from peft.tuners.lora import LoraLayer

    prefix = "base_model.model."
    return {n[len(prefix):]: m for n, m in theirs.named_modules() if isinstance(m, LoraLayer)}


def batch():
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, 64, (4, 9), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.randint(0, 3, (4,), generator=g)}


def train(model, steps: int = 3) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    data = batch()
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        model(**data).loss.backward()
        opt.step()


def exact_triplets(W, init: str):
    """PiSSA's top-RANK triplets of W in fp64 arithmetic: the SVD for "pissa"; for "pissa_niter_K",
    Halko et al.'s Algorithm 5.1 with q = RANK on the random matrix both sides draw (seed 1234, fp32)."""
    if init == "pissa":
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        return U[:, :RANK], S[:RANK], Vh[:RANK]
    wide = W.shape[0] < W.shape[1]
    a = W.T if wide else W
    torch.manual_seed(1234)
    q = torch.linalg.qr(a @ torch.randn(a.shape[1], RANK).double()).Q
    for _ in range(int(init.split("_niter_")[1])):
        q = torch.linalg.qr(a @ torch.linalg.qr(a.T @ q).Q).Q
    U, S, Vh = torch.linalg.svd(q.T @ a, full_matrices=False)
    U = q @ U
    return (Vh.T, S, U.T) if wide else (U, S, Vh)


def factor_error(B, A, base, name, init: str) -> float:
    """Largest entry of (B, A) away from the factors computed in fp64, per-component signs aligned.

    PEFT and peftlab reach PiSSA's triplets by different routes (exact: LAPACK's fp32 SVD
    against the Gram matrix's eigendecomposition; randomized: the same steps with the
    products in another order), so each is judged by its distance from exact arithmetic."""
    U, S, Vh = exact_triplets(base.get_submodule(name).weight.detach().double(), init)
    root = (S / (ALPHA / RANK)).sqrt()
    want_B, want_A = U * root, root[:, None] * Vh
    signs = torch.sign((B.double() * want_B).sum(0))
    return max((B.double() * signs - want_B).abs().max().item(), (A.double() * signs[:, None] - want_A).abs().max().item())


@pytest.mark.parametrize("init", ["pissa", "pissa_niter_4", "olora"])
def test_peft_parity(init, seeded_svd_lowrank):
    base, ours, theirs = peft_pair(init)
    ours_layers, theirs_layers = adapted_layers(ours), peft_layers(theirs)
    assert set(ours_layers) == set(theirs_layers) and len(ours_layers) == 4

    # Same initial factors (up to per-component sign), products and residual base weights.
    for name, layer in ours_layers.items():
        peft_layer = theirs_layers[name]
        A, B = layer.adapter.lora_A.detach(), layer.adapter.lora_B.detach()
        pA, pB = peft_layer.lora_A["default"].weight.detach(), peft_layer.lora_B["default"].weight.detach()
        assert math.isclose(layer.adapter.scale, peft_layer.scaling["default"])
        signs = torch.sign((B * pB).sum(0))
        if init.startswith("pissa"):  # two routes to the same factors: each against exact arithmetic
            ours_error, theirs_error = factor_error(B, A, base, name, init), factor_error(pB, pA, base, name, init)
            assert theirs_error < 1e-4 and ours_error <= 2 * max(theirs_error, 1e-6), (ours_error, theirs_error)
        else:  # the same expressions
            torch.testing.assert_close(B * signs, pB, atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(A * signs[:, None], pA, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(B @ A, pB @ pA, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(layer.base.weight, peft_layer.get_base_layer().weight, atol=1e-6, rtol=1e-5)

    # Same trainable set: the classifier head and A, B of every adapted layer.
    ours_count = {n: p.numel() for n, p in trainable_parameters(ours).items()}
    theirs_count = {n: p.numel() for n, p in theirs.named_parameters() if p.requires_grad}
    assert len(ours_count) == len(theirs_count) == 4 * 2 + 2
    assert sum(ours_count.values()) == sum(theirs_count.values())

    data = batch()
    for model in (base, ours, theirs):
        model.eval()
    with torch.no_grad():
        want = base(input_ids=data["input_ids"], attention_mask=data["attention_mask"]).logits
        ours_logits = ours(input_ids=data["input_ids"], attention_mask=data["attention_mask"]).logits
        theirs_logits = theirs(input_ids=data["input_ids"], attention_mask=data["attention_mask"]).logits
    torch.testing.assert_close(ours_logits, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(theirs_logits, want, atol=1e-5, rtol=1e-5)

    train(ours)
    train(theirs)
    ours.eval()
    theirs.eval()
    with torch.no_grad():
        ours_logits = ours(input_ids=data["input_ids"], attention_mask=data["attention_mask"]).logits
        theirs_logits = theirs(input_ids=data["input_ids"], attention_mask=data["attention_mask"]).logits
    assert not torch.allclose(ours_logits, want, atol=1e-3)  # training moved the model
    torch.testing.assert_close(ours_logits, theirs_logits, atol=1e-5, rtol=1e-5)
