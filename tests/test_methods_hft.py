"""HFT: which parameters train in each round, and the optimizer state of the frozen ones."""

from __future__ import annotations

import torch

from peftlab.methods.hft import HalfFineTuning
from tests.test_method_contract import batch, tiny_llama

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
REST = ("gate_proj", "up_proj", "down_proj", "input_layernorm", "post_attention_layernorm")


def prepared(round_steps: int = 2, seed: int = 0):
    model = tiny_llama()
    torch.manual_seed(seed)
    method = HalfFineTuning(round_steps=round_steps)
    method.prepare(model)
    return model, method


def frozen_names(model, method, round_index: int) -> set[str]:
    ids = {id(p) for p in method.frozen_in_round(round_index)}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_each_round_freezes_two_of_four_attention_matrices_and_half_of_the_rest_per_layer():
    model, method = prepared()
    for round_index in range(4):
        frozen = frozen_names(model, method, round_index)
        for layer in range(2):
            prefix = f"model.layers.{layer}."
            attention = [c for c in ATTENTION if f"{prefix}self_attn.{c}.weight" in frozen]
            rest = [c for c in REST if any(n.startswith(prefix) and f".{c}." in n for n in frozen)]
            assert len(attention) == 2, (round_index, attention)
            assert len(rest) in (2, 3), (round_index, rest)
        assert not any(n.startswith(("model.embed_tokens", "model.norm", "lm_head")) for n in frozen)
    draws = [frozen_names(model, method, r) for r in range(4)]
    assert len({frozenset(d) for d in draws}) > 1  # redrawn every round
    again, method_again = prepared()
    assert frozen_names(again, method_again, 3) == draws[3]  # a function of the run's seed and the round
    other, method_other = prepared(seed=1)
    assert any(frozen_names(other, method_other, r) != draws[r] for r in range(4))


def test_frozen_parameters_do_not_move_and_their_optimizer_state_is_dropped_at_each_round():
    model, method = prepared(round_steps=2)
    model.train()
    params = dict(model.named_parameters())
    opt = torch.optim.AdamW(params.values(), lr=1e-2, weight_decay=0.1)
    method.on_train_begin(model, optimizer=opt)
    for step in range(4):
        round_index = step // 2
        frozen = frozen_names(model, method, round_index)
        had_state = {n for n in frozen if opt.state.get(params[n])}
        if step % 2 == 0 and round_index > 0:
            assert had_state  # some of this round's frozen half trained in the previous round
        before = {n: p.detach().clone() for n, p in params.items()}
        model(**batch("causal_lm", seed=step)).loss.backward()
        method.on_after_backward(model, step)
        if step % 2 == 0:  # round start: no state for the parameters frozen in this round
            assert all(not opt.state.get(params[n]) for n in frozen)
        assert all(params[n].grad is None for n in frozen)
        opt.step()
        opt.zero_grad()
        moved = {n for n, p in params.items() if not torch.equal(before[n], p)}
        assert not moved & frozen  # no update, no weight decay
        assert {n for n in params if n not in frozen} - moved <= {"model.embed_tokens.weight", "lm_head.weight"}
