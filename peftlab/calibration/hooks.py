"""Forward hooks on layer inputs: which tokens count, which layers see the same input.

Padding never counts. With ``label_mask`` the positions whose per-token label
is -100 (a causal LM's prompt tokens) do not count either; a batch whose labels
are one per sequence (classification) has nothing to mask.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

IGNORE_INDEX = -100
#: What the model is called with; labels stay out (no loss is needed, only the layer inputs).
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def token_mask(batch: dict[str, Tensor], label_mask: bool) -> Tensor:
    """(batch, length) booleans: the positions whose layer inputs count."""
    ids = batch["input_ids"]
    mask = batch.get("attention_mask", torch.ones_like(ids)).bool()
    labels = batch.get("labels")
    if label_mask and labels is not None and labels.shape == ids.shape:
        mask = mask & (labels != IGNORE_INDEX)
    return mask


def run_model(model: nn.Module, batch: dict[str, Tensor]) -> None:
    device = next(model.parameters()).device
    model(**{k: v.to(device) for k, v in batch.items() if k in MODEL_INPUTS})


def first_input(args: tuple) -> Tensor:
    return args[0] if isinstance(args, (tuple, list)) else args


@contextlib.contextmanager
def hooked(model: nn.Module, hooks: dict[str, Callable[[Tensor], None]]) -> Iterator[None]:
    """Call ``hooks[name](input)`` with the input of each named module in every forward, inside the block."""
    handles = []
    try:
        for name, fn in hooks.items():
            handles.append(model.get_submodule(name).register_forward_hook(
                lambda module, args, output, fn=fn: fn(first_input(args).detach())))
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def equal_input_groups(model: nn.Module, layers: Sequence[str], batch: dict[str, Tensor]) -> dict[str, str]:
    """``{layer: the first layer with the same input}`` for every layer (itself when unique).

    Found from one forward pass by hashing each input (q, k and v of an
    attention block, gate and up of a gated MLP share theirs), so the statistic
    is computed once per distinct input.
    """
    digests: dict[str, str] = {}

    def digest(name: str) -> Callable[[Tensor], None]:
        def fn(x: Tensor) -> None:
            digests[name] = hashlib.blake2b(x.float().cpu().contiguous().numpy().tobytes(), digest_size=16).hexdigest()
        return fn

    with hooked(model, {name: digest(name) for name in layers}):
        run_model(model, batch)
    first: dict[str, str] = {}
    return {name: first.setdefault(digests.get(name, name), name) for name in layers}
