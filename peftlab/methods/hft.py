"""HFT, Half Fine-Tuning: full fine-tuning with half of each layer's parameters frozen per round.

Hui et al. 2024, "HFT: Half Fine-Tuning for Large Language Models". No official
code was found; what follows is our reading of the paper.

Every parameter is trainable. Training is cut into rounds of ``round_steps``
optimizer steps; at the start of each round, in every repeated block of the
model (a transformer layer, ``...layer.N`` / ``...layers.N`` / ``...h.N``), the
parameter categories (one category = one submodule's weight and bias) are split
into two groups and half of each group is frozen for the round:

* attention: the attention Linears (q, k, v, o): 2 of 4 frozen;
* the rest: the feed-forward Linears and the norms: half frozen (an odd count
  freezes the lower or the upper half with equal chance, so half on average).

Parameters outside the blocks (embeddings, final norm, task head) train in every
round (our reading: the paper selects within the transformer layers). The draw
of round t comes from a generator seeded with (the run's seed, t), so it is the
same in every process and after a resume. Freezing means: no gradient reaches
the optimizer (the gradient is dropped after backward, so clipping ignores it,
and neither the update nor weight decay touches the parameter), and the
optimizer state of the frozen parameters is dropped at the start of the round,
so they start afresh when they train again. #P per round is about half of the
blocks' parameters plus everything outside them.

Where we differ from the paper: backward still computes the frozen half's
gradients (``requires_grad`` stays on, so every parameter is saved and
checkpointed with its trained value); the paper's ~30% time saving is not
reproduced. Export with ``peftlab export --format merged``.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from peftlab.methods.base import positive_int
from peftlab.methods.full import FullFineTuning

BLOCK = re.compile(r"^(.*?\.(?:layer|layers|h|blocks|block)\.\d+)\.(.+)$")
ATTENTION = re.compile(r"attn|attention", re.IGNORECASE)


def block_categories(model: nn.Module) -> dict[str, dict[str, list[list[Tensor]]]]:
    """Per block: ``{"attention": [params of one category, ...], "rest": [...]}``."""
    blocks: dict[str, dict[str, list[list[Tensor]]]] = {}
    for name, module in model.named_modules():
        params = list(module.parameters(recurse=False))
        match = BLOCK.match(name)
        if not params or not match:
            continue
        group = "attention" if isinstance(module, nn.Linear) and ATTENTION.search(match.group(2)) else "rest"
        blocks.setdefault(match.group(1), {"attention": [], "rest": []})[group].append(params)
    return blocks


class HalfFineTuning(FullFineTuning):
    """Full fine-tuning with half of each block's parameter categories frozen per round."""

    holds_parameters_still = True

    def __init__(self, round_steps: int = 100, **rest: Any):
        super().__init__(**rest)
        self.round_steps = positive_int(round_steps, "method.round_steps")
        self.seed = 0
        self.blocks: dict[str, dict[str, list[list[Tensor]]]] = {}
        self.round: int | None = None
        self.frozen: list[Tensor] = []

    def adapt(self, model: nn.Module, *, target_defaults: Sequence[str] = (), calibration: Any = None) -> None:
        super().adapt(model, target_defaults=target_defaults, calibration=calibration)
        self.blocks = block_categories(model)
        self.seed = int(torch.randint(0, 2**62, ()))  # from the run's seed

    def frozen_in_round(self, round_index: int) -> list[Tensor]:
        """The parameters frozen during round ``round_index`` (a pure function of the seed and the round)."""
        generator = torch.Generator().manual_seed(self.seed + round_index)
        frozen = []
        for groups in self.blocks.values():
            for categories in (groups["attention"], groups["rest"]):
                n = len(categories)
                count = n // 2 + (n % 2) * int(torch.randint(2, (), generator=generator))
                for i in torch.randperm(n, generator=generator)[:count].tolist():
                    frozen.extend(categories[i])
        return frozen

    def on_after_backward(self, model: nn.Module, step: int) -> None:
        round_index = step // self.round_steps
        if round_index != self.round:
            self.round, self.frozen = round_index, self.frozen_in_round(round_index)
            if step % self.round_steps == 0 and self.optimizer is not None:
                for p in self.frozen:  # they start afresh when they train again
                    self.optimizer.state.pop(p, None)
        for p in self.frozen:
            p.grad = None

    def state_dict(self) -> dict[str, Any]:
        return {"seed": torch.tensor(self.seed, dtype=torch.int64)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "seed" in state:
            self.seed = int(state["seed"])
            self.round = None
