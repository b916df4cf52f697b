"""How much a fine-tuned encoder's function changed on preserved data and on the fine-tuning data.

For every completed run under RUNS_DIR (fine-tuned on the default docstring task),
mean-pooled last-layer features of two text sets are computed with the fine-tuned
encoder and with the pretrained one:

* preserved: the 300 test prompts of the arithmetic word problems
  (``dataset=arith_kinds``), text the fine-tuning never sees and that
  CorDA-KPA's covariance is computed from (its train split);
* tuned: the test docstrings of the fine-tuning task itself.

Per set it reports
* drift = 1 - mean cosine similarity between fine-tuned and pretrained features
  (0: the encoder computes the same features on this data);
* structure = Spearman correlation between the two encoders' pairwise cosine
  similarities (1: the same neighbourhoods, whatever the features' rotation).

The pretrained features come from the run's own ``method.reference()``: the
pretrained function under every method (PiSSA-like residuals included).

Usage: python drift.py RUNS_DIR OUT.jsonl [ARM ...]   (one JSON line per run of those arms, all by
default; runs already in OUT.jsonl are not measured again)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from peftlab.data.arith import load_arith_kinds
from peftlab.data.builtin import load_stdlib_docs
from peftlab.experiment import load_trained
from peftlab.methods.base import merge


@torch.inference_mode()
def features(model, tokenizer, texts: list[str], max_length: int, batch: int = 128) -> torch.Tensor:
    """Mean-pooled last hidden states of the encoder under the classification head (fp32, n x d)."""
    encoder = model.base_model
    out = []
    for i in range(0, len(texts), batch):
        enc = tokenizer(texts[i:i + batch], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        hidden = encoder(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        out.append((hidden * mask).sum(1) / mask.sum(1))
    return torch.cat(out).float()


def ranks(x: torch.Tensor) -> torch.Tensor:
    return x.argsort().argsort().double()


def compare(tuned: torch.Tensor, before: torch.Tensor) -> dict[str, float]:
    cos = torch.nn.functional.cosine_similarity(tuned, before, dim=1)
    pairs = torch.triu_indices(len(tuned), len(tuned), offset=1)

    def similarities(f: torch.Tensor) -> torch.Tensor:
        f = torch.nn.functional.normalize(f, dim=1)
        return (f @ f.T)[pairs[0], pairs[1]]

    a, b = ranks(similarities(tuned)), ranks(similarities(before))
    spearman = float(torch.corrcoef(torch.stack([a, b]))[0, 1])
    return {"drift": float(1 - cos.mean()), "structure": spearman}


def measure(run: Path, texts: dict[str, list[str]]) -> dict[str, dict[str, float]]:
    exp = load_trained(run)
    model = exp.model.eval()
    merge(model)
    result = {}
    for name, batch in texts.items():
        tuned = features(model, exp.tokenizer, batch, exp.loaded.max_length)
        with exp.method.reference(model):
            before = features(model, exp.tokenizer, batch, exp.loaded.max_length)
        result[name] = compare(tuned, before)
    return result


def main(root: Path, out: Path, arms: list[str]) -> None:
    texts = {"preserved": list(load_arith_kinds()["test"]["text"]), "tuned": list(load_stdlib_docs()["test"]["text"])}
    done = set()
    if out.exists():
        done = {json.loads(x)["run"] for x in out.read_text().splitlines() if x.strip()}
    for meta in sorted(root.glob("*/v*/meta.json")):
        run, info = meta.parent, json.loads(meta.read_text())
        if str(run) in done or info.get("status") != "completed" or (arms and run.parent.name not in arms):
            continue
        row = {"run": str(run), "arm": run.parent.name, "seed": info.get("seed"), **measure(run, texts)}
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:])
