"""EVA's statistic: incremental PCA of each layer's inputs until the components it needs converge.

Paischer et al. 2024, "One Initialization to Rule them All: Fine-tuning via
Explained Variance Adaptation"; the loop follows PEFT's ``get_eva_state_dict``
step for step, so both give the same components and ranks on the same batches:

1. One forward pass finds the layers that see the same input; they share one PCA
   (with the largest component count among them).
2. Each distinct layer runs :class:`IncrementalPCA` with ``k_l = round(rho r_l)``
   components over the batches, cycled; a batch with fewer tokens than ``k_l``
   is skipped for that layer.
3. After every batch the ranks are redistributed: the explained-variance ratios
   of all layers are pooled and the top ``budget = sum_l r_l`` kept; layer l gets
   as many as it has among them (0 means no adapter).
4. A layer stops when the cosine similarity between consecutive estimates of
   each component it currently needs is >= ``tau``; it starts again when the
   redistribution later needs more of its components.

Where we differ: PEFT cycles the batches until every layer converges, which
never ends when one does not; here the pass stops after ``max_batches`` batches
and says which layers did not converge (a UserError: more samples or a lower
tau). Memory: per distinct layer ``k_l`` components of width n (no n x n matrix).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from peftlab.calibration.hooks import equal_input_groups, hooked, run_model, token_mask
from peftlab.calibration.pca import IncrementalPCA
from peftlab.calibration.request import Sink, Statistic
from peftlab.errors import UserError


PROGRESS_EVERY = 25  # batches between progress lines


class _Layer:
    """One distinct layer input under PCA, with its convergence state."""

    def __init__(self, k: int, tau: float):
        self.pca = IncrementalPCA(k)
        self.k, self.tau = k, tau
        self.converged = torch.zeros(k, dtype=torch.bool)

    def update(self, rows: Tensor) -> None:
        if rows.shape[0] < self.k:
            return
        previous = None if self.pca.components is None else self.pca.components.clone()
        self.pca.partial_fit(rows)
        if previous is not None:
            self.converged = torch.nn.functional.cosine_similarity(self.pca.components, previous) >= self.tau


def redistribute(ratios: dict[str, Tensor], source: dict[str, str], budget: int) -> dict[str, int]:
    """Ranks per layer: the top ``budget`` explained-variance ratios pooled over layers (PEFT's order)."""
    firsts = [n for n in source if source[n] == n]
    shared = [n for first in firsts for n in source if source[n] == first and n != first]
    order = firsts + shared
    keys, values = zip(*[(name, v) for name in order for v in ratios[source[name]]])
    idx = torch.stack(values).argsort(descending=True)
    counts = Counter([keys[i] for i in idx[:budget]])
    ranks = {name: counts.get(name, 0) for name in order}
    for name in shared:  # a layer that shares an input never has more than the layer computing it
        first = source[name]
        if ranks[first] < ranks[name]:
            ranks[first], ranks[name] = ranks[name], ranks[first]
    return ranks


class ExplainedVariance(Statistic):
    """Top components of each layer's inputs and the redistributed ranks (EVA)."""

    name = "explained_variance"

    def __init__(self, ranks: dict[str, int], rho: float, tau: float, label_mask: bool, max_batches: int):
        self.ranks, self.rho, self.tau = dict(ranks), float(rho), float(tau)
        self.label_mask, self.max_batches = bool(label_mask), int(max_batches)

    def params(self) -> dict[str, Any]:
        return {"ranks": self.ranks, "rho": self.rho, "tau": self.tau, "label_mask": self.label_mask,
                "max_batches": self.max_batches}

    def memory_bytes(self, model: nn.Module, layers: Sequence[str], max_bytes: int) -> int:
        return sum(3 * round(self.rho * self.ranks[n]) * model.get_submodule(n).weight.shape[1] * 8 for n in layers)

    @torch.no_grad()
    def collect(self, model: nn.Module, layers: Sequence[str], batches: Sequence[dict[str, Tensor]],
                sink: Sink, *, max_bytes: int, say: Callable[[str], None]) -> dict[str, Any]:
        source = equal_input_groups(model, layers, batches[0])
        wanted = {name: round(self.rho * self.ranks[name]) for name in layers}
        for name in layers:  # layers sharing an input compute the largest count among them
            wanted[source[name]] = max(wanted[source[name]], wanted[name])
        states = {name: _Layer(wanted[name], self.tau) for name in layers if source[name] == name}
        ranks, used = self._loop(model, batches, states, source, wanted, say)
        for name in layers:
            pca = states[source[name]].pca
            if not bool(torch.all(states[source[name]].converged[: ranks[name]])):
                raise UserError(f"EVA's components of layer '{name}' did not converge (tau={self.tau}) within "
                                f"{self.max_batches} calibration batches: raise method.calibration.num_samples "
                                f"(each batch needs >= rho*rank counted tokens) or lower method.tau")
            sink(name, {"components": pca.components[: ranks[name]].float().cpu().contiguous(),
                        "singular_values": pca.singular_values[: ranks[name]].float().cpu().contiguous()})
        say(f"{used} batches; ranks {min(ranks.values())}..{max(ranks.values())} over {len(layers)} layers")
        return {"ranks": ranks, "source": source, "batches": used}

    def _loop(self, model: nn.Module, batches: Sequence[dict[str, Tensor]], states: dict[str, _Layer],
              source: dict[str, str], wanted: dict[str, int],
              say: Callable[[str], None]) -> tuple[dict[str, int], int]:
        budget = sum(self.ranks.values())
        ranks = {name: wanted[source[name]] for name in source}
        active = dict.fromkeys(states, True)
        mask: list[Tensor] = []

        def hook(name: str) -> Callable[[Tensor], None]:
            def fn(x: Tensor) -> None:
                if active[name]:
                    states[name].update(x[mask[0].to(x.device)])
            return fn

        used = 0
        with hooked(model, {name: hook(name) for name in states}):
            for batch in itertools.cycle(batches):
                for name, state in states.items():
                    active[name] = not bool(torch.all(state.converged[: ranks[name]]))
                if not any(active.values()) or used >= self.max_batches:
                    break
                if used and used % PROGRESS_EVERY == 0:
                    say(f"batch {used}: {len(active) - sum(active.values())}/{len(active)} distinct layer inputs "
                        f"converged")
                mask[:] = [token_mask(batch, self.label_mask)]
                run_model(model, batch)
                used += 1
                if all(s.pca.components is not None for s in states.values()):
                    ratios = {n: s.pca.explained_variance_ratio[: wanted[n]] for n, s in states.items()}
                    ranks = redistribute(ratios, source, budget)
        return ranks, used
