"""Evaluation of a causal language model: token loss and perplexity, and exact
match of generated answers.

Loss convention: ``labels`` are aligned with ``input_ids`` and -100 marks a
position that is not scored (the prompt of an instruction example, padding);
the model's logits at position t predict ``labels[t + 1]``. The loss is the
mean negative log-likelihood over every scored token of the split (not a mean
of batch means), computed here from the logits, so it does not depend on how a
model reduces its own loss. Sums stay on the device and are read back once at
the end, so a pass costs one host synchronisation.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from peftlab.answers import exact_match, extract_answer
from peftlab.generation import eval_mode, generate, position_ids_from_mask
from peftlab.runs import atomic_write_text, to_json

IGNORE_INDEX = -100


@torch.no_grad()
def lm_loss(model: nn.Module, loader: Iterable[dict[str, Tensor]], device: Any = None) -> dict[str, float]:
    """``{"loss", "perplexity", "tokens"}`` over every scored label token of ``loader``.

    Each batch holds ``labels`` and the model's inputs. No tokens to score gives
    NaN loss and perplexity.
    """
    device = device if device is not None else next(model.parameters()).device
    nll_sum = torch.zeros((), dtype=torch.float64, device=device)
    tokens = torch.zeros((), dtype=torch.float64, device=device)  # exact as a float up to 2**53
    with eval_mode(model):
        for batch in loader:
            inputs = {key: value.to(device) for key, value in batch.items()}
            if "labels" not in inputs:
                raise ValueError(f"a batch without labels (keys: {', '.join(sorted(inputs))})")
            labels = inputs.pop("labels")
            logits = model(**with_position_ids(model, inputs)).logits
            batch_sum, batch_tokens = shifted_nll_sum(logits, labels)
            nll_sum += batch_sum
            tokens += batch_tokens
    total, count = torch.stack([nll_sum, tokens]).tolist()  # the one host sync
    return loss_metrics(total, int(count))


def with_position_ids(model: nn.Module, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
    """``inputs`` plus position ids counted from each row's first real token.

    A model that derives positions from the sequence index would shift a
    left-padded row; for right padding the positions of real tokens are
    unchanged. Added only when absent and when the model's forward names them.
    """
    if "position_ids" in inputs or "attention_mask" not in inputs:
        return inputs
    if "position_ids" not in inspect.signature(model.forward).parameters:
        return inputs
    return {**inputs, "position_ids": position_ids_from_mask(inputs["attention_mask"])}


def shifted_nll_sum(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(summed NLL in float64, number of scored tokens) with logits[t] predicting labels[t + 1]."""
    # At least float32 for the log-softmax: half-precision logits lose the small probabilities.
    logits = logits[:, :-1].to(torch.promote_types(logits.dtype, torch.float32))
    targets = labels[:, 1:].to(logits.device)
    nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    return nll.double(), (targets != IGNORE_INDEX).sum().double()


def loss_metrics(nll_sum: float, tokens: int) -> dict[str, float]:
    """Mean NLL and its exponential; NaN for both when nothing was scored."""
    if tokens == 0:
        return {"loss": float("nan"), "perplexity": float("nan"), "tokens": 0}
    loss = nll_sum / tokens
    try:
        perplexity = math.exp(loss)
    except OverflowError:  # a loss above ~709 nats: perplexity is past the float range
        perplexity = float("inf")
    return {"loss": loss, "perplexity": perplexity, "tokens": tokens}


def generation_metrics(
    model: nn.Module,
    tokenizer: Any,
    prompt_ids: list[list[int]],
    answers: list[str],
    prompts_text: list[str] | None = None,
    *,
    max_new_tokens: int,
    batch_size: int,
    marker: str = "####",
    eos_token_ids: Iterable[int] | None = None,
    pad_token_id: int | None = None,
    device: Any = None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Greedy answers to ``prompt_ids`` scored by exact match against ``answers``.

    Returns ``({"exact_match": fraction, "generated": n}, rows)``, one row per
    prompt: ``{"prompt", "output", "target", "prediction", "correct"}``. The
    output is decoded without special tokens; the prompt is ``prompts_text[i]``
    when given, else the prompt ids decoded as the model saw them (special
    tokens kept). Generation stops at the tokenizer's and the model's
    end-of-sequence tokens unless ``eos_token_ids`` says otherwise. No prompts
    gives an exact match of NaN.
    """
    check_lengths(prompt_ids, answers, prompts_text)
    eos = set(eos_token_ids) if eos_token_ids is not None else stop_token_ids(model, tokenizer)
    pad = pad_token_id if pad_token_id is not None else padding_token_id(model, tokenizer, eos)
    outputs = generate(model, prompt_ids, max_new_tokens=max_new_tokens, eos_token_ids=eos,
                       pad_token_id=pad, batch_size=batch_size, device=device)
    rows = []
    for i, (ids, new_ids, answer) in enumerate(zip(prompt_ids, outputs, answers)):
        prompt = prompts_text[i] if prompts_text is not None else tokenizer.decode(ids, skip_special_tokens=False)
        rows.append(score_row(prompt, tokenizer.decode(new_ids, skip_special_tokens=True), answer, marker))
    correct = sum(row["correct"] for row in rows)
    return {"exact_match": correct / len(rows) if rows else float("nan"), "generated": len(rows)}, rows


def check_lengths(prompt_ids: list[list[int]], answers: list[str], prompts_text: list[str] | None) -> None:
    """ValueError unless there is one answer (and one prompt text, when given) per prompt."""
    if len(answers) != len(prompt_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(answers)} answers")
    if prompts_text is not None and len(prompts_text) != len(prompt_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(prompts_text)} prompt texts")


def score_row(prompt: str, output: str, target: str, marker: str) -> dict[str, Any]:
    """One generation as a reader sees it, with its extracted answer and verdict."""
    return {
        "prompt": prompt,
        "output": output,
        "target": target,
        "prediction": extract_answer(output, marker),
        "correct": exact_match(output, target, marker),
    }


def stop_token_ids(model: nn.Module, tokenizer: Any) -> set[int]:
    """Every end-of-sequence id the tokenizer or the model's generation settings name.

    Chat models often end a turn with a token of their own (listed by the
    model's generation settings) besides the tokenizer's end of sequence.
    """
    settings = getattr(model, "generation_config", None)
    ids: set[int] = set()
    for value in (getattr(tokenizer, "eos_token_id", None), getattr(settings, "eos_token_id", None)):
        if value is None:
            continue
        ids.update(int(v) for v in (value if isinstance(value, (list, tuple, set)) else [value]))
    return ids


def padding_token_id(model: nn.Module, tokenizer: Any, eos: set[int]) -> int:
    """The tokenizer's pad, else the model's, else an end-of-sequence id, else 0.

    Pads are masked and follow a finished sequence only, so any id works; a
    real one keeps the batch readable.
    """
    settings = getattr(model, "generation_config", None)
    for value in (getattr(tokenizer, "pad_token_id", None), getattr(settings, "pad_token_id", None)):
        if isinstance(value, int):
            return value
    return min(eos) if eos else 0


def write_generations(rows: list[dict[str, Any]], path: str | Path) -> None:
    """``rows`` as strict JSON lines (one object a line), written atomically."""
    atomic_write_text(path, "".join(to_json(row) + "\n" for row in rows))
