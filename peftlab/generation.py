"""Batched greedy decoding of a causal language model, with its key/value cache.

Conventions:

* prompts are lists of token ids; each prompt yields the list of its **new**
  tokens, without the end-of-sequence token and anything after it, in the
  order the prompts were given;
* a batch is **left**-padded, so every sequence's next token comes from the
  last column; the attention mask is 0 on pads and the position ids count from
  0 at each sequence's first real token (passed explicitly: not every model
  derives them from the mask, and a padded row must see the positions it
  would see alone);
* one forward over the padded prompts fills the cache, then each step feeds
  one token per sequence with ``past_key_values``; a sequence that has emitted
  an end-of-sequence token is fed the pad token from then on, and the batch
  stops when every sequence has stopped or ``max_new_tokens`` is reached.

Any module with the causal-LM call signature of transformers works (an
adapted model included): ``model(input_ids=, attention_mask=, position_ids=,
past_key_values=, use_cache=True)`` returning ``.logits`` and
``.past_key_values``.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from peftlab.data.order import length_sorted_batches


@torch.no_grad()
def generate(
    model: nn.Module,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    eos_token_ids: set[int] | list[int],
    pad_token_id: int,
    batch_size: int = 16,
    device: Any = None,
) -> list[list[int]]:
    """Greedy continuations of ``prompts`` (see the module docstring for the conventions).

    Prompts are batched by length (fewer pads), ``batch_size`` at a time. The
    model runs in eval mode during the call and gets its previous mode back.
    An empty ``eos_token_ids`` decodes every prompt to ``max_new_tokens``.
    """
    check_arguments(prompts, max_new_tokens, batch_size)
    eos = sorted({int(t) for t in eos_token_ids})
    device = device if device is not None else next(model.parameters()).device
    results: list[list[int]] = [[] for _ in prompts]
    if max_new_tokens == 0:
        return results
    with eval_mode(model):
        for batch in length_sorted_batches(prompts, batch_size):
            new_tokens = generate_batch(model, [prompts[i] for i in batch], max_new_tokens=max_new_tokens,
                                        eos=eos, pad_token_id=pad_token_id, device=device)
            for index, tokens in zip(batch, new_tokens):
                results[index] = tokens
    return results


def check_arguments(prompts: Sequence[Sequence[int]], max_new_tokens: int, batch_size: int) -> None:
    """ValueError for what decoding cannot do: an empty prompt has no next-token distribution."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens}: use an integer >= 0")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: use an integer >= 1")
    empty = [i for i, prompt in enumerate(prompts) if len(prompt) == 0]
    if empty:
        raise ValueError(f"prompts {empty[:5]} are empty: every prompt needs at least one token")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode inside the block; every submodule's previous mode restored after, on error too."""
    previous = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, training in previous.items():
            module.training = training


def generate_batch(model: nn.Module, prompts: list[list[int]], *, max_new_tokens: int, eos: list[int],
                   pad_token_id: int, device: Any) -> list[list[int]]:
    """Greedy decoding of one batch; new tokens of each prompt, cut at its first EOS."""
    input_ids, attention_mask = left_pad(prompts, pad_token_id, device)
    position_ids = position_ids_from_mask(attention_mask)
    eos_ids = torch.tensor(eos, dtype=torch.long, device=device)
    last_only = last_logits_kwargs(model)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                use_cache=True, **last_only)
    finished = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    nan_seen = torch.zeros((), dtype=torch.bool, device=device)
    steps: list[Tensor] = []
    for step in range(max_new_tokens):
        logits = out.logits[:, -1]
        # argmax of a NaN row is an arbitrary token: noted here, refused after the loop.
        nan_seen |= torch.isnan(logits).any()
        # A finished sequence is fed the pad: its later tokens are cut off below anyway.
        token = torch.where(finished, pad_token_id, logits.argmax(-1))
        steps.append(token)
        finished |= torch.isin(token, eos_ids)
        if step + 1 == max_new_tokens or bool(finished.all()):  # the one host sync per step
            break
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(prompts), 1)], dim=1)
        position_ids = position_ids[:, -1:] + 1
        out = model(input_ids=token[:, None], attention_mask=attention_mask, position_ids=position_ids,
                    past_key_values=out.past_key_values, use_cache=True, **last_only)
    if bool(nan_seen):
        raise FloatingPointError("the model produced NaN logits during generation; its outputs would be "
                                 "arbitrary tokens (check its weights, dtype and attention implementation)")
    return cut_at_eos(torch.stack(steps, dim=1).tolist(), set(eos))


def left_pad(prompts: list[list[int]], pad_token_id: int, device: Any) -> tuple[Tensor, Tensor]:
    """``(input_ids, attention_mask)``, both batch x longest, pads on the left."""
    width = max(len(prompt) for prompt in prompts)
    input_ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt):] = torch.as_tensor(prompt, dtype=torch.long)
        attention_mask[row, width - len(prompt):] = 1
    return input_ids.to(device), attention_mask.to(device)


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions counting from 0 at each row's first real token; pads get 0 (they are masked)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def last_logits_kwargs(model: nn.Module) -> dict[str, int]:
    """The forward argument that computes logits for the last position only, when the model has one.

    Without it the model projects every prompt position onto the vocabulary,
    which for long prompts and large vocabularies dominates the prefill's memory.
    """
    parameters = inspect.signature(model.forward).parameters
    for name in ("logits_to_keep", "num_logits_to_keep"):  # the newer name, then the older one
        if name in parameters:
            return {name: 1}
    return {}


def cut_at_eos(rows: list[list[int]], eos: set[int]) -> list[list[int]]:
    """Each row up to (not including) its first token in ``eos``."""
    cut = []
    for row in rows:
        end = next((i for i, token in enumerate(row) if token in eos), len(row))
        cut.append(row[:end])
    return cut
