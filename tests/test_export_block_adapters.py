"""The PEFT export of MiSS (all modes) and RandLoRA: a LoRA of the weight change that PEFT
loads on the original model and that reproduces the adapted model's outputs.

MiSS's change has rank <= r (modes miss, mini) or is block-affine, and RandLoRA's is full
rank; neither is capped at twice a rank, so every export is exact at its numerical rank.
The CLI path (`peftlab export RUN --format peft`) is exercised for every method by
tests/test_export.py; here the same export function runs in-process on a tiny BERT.
"""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file

from peftlab.export import PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE, peft_export
from peftlab.methods.miss import MiSS
from peftlab.methods.randlora import RandLoRA
from tests.test_method_contract import batch, tiny_bert, train_steps

peft = pytest.importorskip("peft")

TARGETS = ["query", "value", "intermediate.dense", "output.dense"]
METHODS = {
    "miss": lambda: MiSS(rank=8, target_modules=TARGETS),
    "miss-mini": lambda: MiSS(rank=8, mode="mini", mini_rank=4, target_modules=TARGETS),
    "miss-bat": lambda: MiSS(rank=8, mode="bat", target_modules=TARGETS),
    "randlora": lambda: RandLoRA(rank=8, alpha=16, target_modules=TARGETS),
}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_peft_loads_the_export_and_reproduces_the_outputs(name, tmp_path):
    base = tiny_bert()
    model = copy.deepcopy(base)
    method = METHODS[name]()
    method.prepare(model, target_defaults=[], head_modules=["classifier"])
    train_steps(model, method, steps=3, lr=2e-2)
    with torch.no_grad():
        expected = model(**batch()).logits
        with method.reference(model):
            pretrained = model(**batch()).logits
    assert (expected - pretrained).abs().max() > 1e-2  # training moved the outputs

    exp = SimpleNamespace(model=model, method=method, cfg=OmegaConf.create({}),
                          loaded=SimpleNamespace(head_modules=["classifier"], source="tiny-bert"),
                          task=SimpleNamespace(peft_task_type="SEQ_CLS"))
    tensors, config, report = peft_export(exp)
    assert report["path"] == "factorized" and report["exact"], report["max_relative_error"]
    save_file(tensors, str(tmp_path / PEFT_WEIGHTS_FILE))
    (tmp_path / PEFT_CONFIG_FILE).write_text(json.dumps(config))

    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch()).logits, expected, atol=1e-4, rtol=1e-4)
