"""LoRA and rsLoRA against Hugging Face PEFT on the same weights.

Both sides start from the same tiny BERT and the same lora_A (copied from PEFT,
whose kaiming draw consumes the RNG differently), then train three identical
AdamW steps on their own. Outputs must agree at every stage.
"""

from __future__ import annotations

import copy

import pytest
import torch

from peftlab.methods.base import adapted_layers, trainable_parameters
from peftlab.methods.lora import LoRA
from tests.test_method_contract import batch, tiny_bert

peft = pytest.importorskip("peft")


def peft_and_ours(rank: int, alpha: float, rslora: bool, init: str = "kaiming"):
    base = tiny_bert()
    peft_model = peft.get_peft_model(
        copy.deepcopy(base),
        peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=["query", "value"], lora_dropout=0.0,
                        use_rslora=rslora, modules_to_save=["classifier"],
                        init_lora_weights=True if init == "kaiming" else "gaussian"),
    )
    ours = copy.deepcopy(base)
    method = LoRA(rank=rank, alpha=alpha, rslora=rslora, init=init, target_modules=["query", "value"])
    method.prepare(ours, target_defaults=[], head_modules=["classifier"])
    peft_params = dict(peft_model.named_parameters())
    with torch.no_grad():
        for name, layer in adapted_layers(ours).items():
            layer.adapter.lora_A.copy_(peft_params[f"base_model.model.{name}.lora_A.default.weight"])
    return peft_model, ours


def adamw_steps(model, steps=3):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    model.train()
    for step in range(steps):
        model(**batch(seed=20 + step)).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


@pytest.mark.parametrize("rslora", [False, True])
def test_lora_matches_peft_at_init_and_after_training(rslora):
    peft_model, ours = peft_and_ours(rank=4, alpha=8, rslora=rslora)
    peft_layer = peft_model.base_model.model.bert.encoder.layer[0].attention.self.query
    our_layer = adapted_layers(ours)["bert.encoder.layer.0.attention.self.query"]
    assert our_layer.adapter.scale == pytest.approx(peft_layer.scaling["default"])
    n_peft = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert sum(p.numel() for p in trainable_parameters(ours).values()) == n_peft
    torch.testing.assert_close(ours(**batch()).logits, peft_model(**batch()).logits)
    adamw_steps(peft_model)
    adamw_steps(ours)
    torch.testing.assert_close(ours(**batch()).logits, peft_model(**batch()).logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(
        our_layer.adapter.lora_B, peft_layer.lora_B["default"].weight, atol=1e-6, rtol=1e-4
    )


def test_gaussian_init_has_the_same_distribution_as_peft():
    # Draw order differs, so compare the distribution: N(0, 1/r) for lora_A.
    ours = tiny_bert()
    LoRA(rank=4, alpha=8, init="gaussian", target_modules=["query", "value", "key"]).prepare(
        ours, target_defaults=[], head_modules=[]
    )
    a = torch.cat([layer.adapter.lora_A.flatten() for layer in adapted_layers(ours).values()])
    assert a.std().item() == pytest.approx(1 / 4, rel=0.15)
    assert abs(a.mean().item()) < 0.05
