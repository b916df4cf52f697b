"""The method framework: one wrapper for every adapted Linear, the adapter
protocol, and the training-time hooks a method may use.

Vocabulary: a Linear computes ``y = W x + b`` with
``W`` of shape m x n (out x in).

* :class:`Adapter` - what a per-layer method is: how it initialises from W
  (possibly rewriting the frozen base weight, e.g. PiSSA's residual), its
  trainable parameters, its weight change ``delta_weight()`` and its forward.
* :class:`AdaptedLinear` - the single wrapper that replaces a target
  ``nn.Linear``: frozen base + one adapter, ``base(x) + adapter(x)``, with
  ``merge()``, ``unmerge()`` and a ``disabled`` switch. The same for every method.
* :class:`Method` - how a model is adapted and trained. It chooses the
  trainable parameters and receives named hooks from the training loop
  (param groups, after backward, before/after the optimizer step, extra loss
  terms, checkpoint state), so the loop never knows which method runs.
* :class:`AdapterMethod` - a Method that wraps target Linears with adapters;
  a new per-layer method only implements ``make_adapter``.

``Method.reference(model)`` runs the pretrained function on demand: it swaps
every trainable parameter back to its value right after initialisation. Since
every method's init reproduces the pretrained model (B = 0, or a base rewritten
so that base + adapter = W), this is the pretrained function for every method,
including those whose frozen base alone is not W.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from peftlab.errors import UserError
from peftlab.methods.native import NativeForm


class Adapter(nn.Module):
    """A trainable change to one Linear layer of weight W (m x n).

    Subclasses implement :meth:`initialize` and :meth:`delta_weight`; they
    override :meth:`delta_forward` when a cheaper path than ``x @ dW^T`` exists
    and :meth:`forward` when the change is not additive (e.g. DoRA).
    """

    #: True when ``initialize`` rewrites the frozen base weight (PiSSA, MiLoRA, ...).
    rewrites_base: bool = False

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features

    # -- set-up ---------------------------------------------------------------
    def initialize(self, weight: Tensor, calibration: Any = None) -> Tensor | None:
        """Set the adapter up from the pretrained weight W (m x n) and, for a data-driven method,
        its layer's calibration statistics (a dict of tensors, see ``Method.calibration_request``).

        Returns the new frozen base weight (e.g. ``W - s*B0 A0``) or None to keep W.
        """
        raise NotImplementedError

    def expected_trainable(self) -> int:
        """The trainable-parameter count per layer of the method's formula (#P)."""
        raise NotImplementedError

    def change_rank_bound(self) -> int | None:
        """An upper bound on the rank of the weight change this adapter can make, None when it can be full.

        Export factorises each layer's change at this rank by default; None keeps the
        change's whole numerical rank (exact, larger).
        """
        return None

    # -- function ---------------------------------------------------------------
    def delta_weight(self) -> Tensor:
        """The change to the base weight, m x n: effective weight = base + delta."""
        raise NotImplementedError

    def delta_forward(self, x: Tensor) -> Tensor:
        """``delta_weight() @ x``; override with a cheaper path where there is one."""
        return F.linear(x, self.delta_weight().to(x.dtype))

    def forward(self, x: Tensor, base: nn.Linear) -> Tensor:
        # As PEFT's LoRA layers do: the input is cast to the adapter's dtype (fp32 on a
        # half-precision model), the adapter path runs in it (autocast, when active, still
        # picks the matmul precision) and its output is cast back to the base output's dtype.
        result = base(x)
        return result + self.delta_forward(x.to(self.compute_dtype(x))).to(result.dtype)

    def compute_dtype(self, x: Tensor) -> torch.dtype:
        """The dtype of the adapter path: that of the adapter's parameters (x's if it has none)."""
        for p in self.parameters():
            return p.dtype
        return x.dtype

    def factors(self) -> tuple[Tensor, Tensor] | None:
        """``(B, A)``, the m x r and r x n factor matrices of an update ``B M A`` (M a small core,
        possibly the identity), or None when the adapter has none. Regularizers on factors
        (orthonormality, orthogonality) use them; a method whose adapters have them lists
        ``"factors"`` in ``Method.provides``."""
        return None

    def weight_change(self, weight: Tensor) -> Tensor:
        """What the adapter adds to the frozen weight ``weight`` (merged minus frozen), differentiable.

        ``delta_weight()`` for an additive adapter; adapters whose change depends on
        W itself (DoRA's rescaling, Bone's block-affine mode) override it.
        """
        return self.delta_weight()

    def peft_native(self) -> NativeForm | None:
        """This layer as a Hugging Face PEFT tuner stores it, or None: export then writes a LoRA of its change."""
        return None

    # -- merging ----------------------------------------------------------------
    def merged_weight(self, weight: Tensor) -> Tensor:
        """The single weight that computes what base + adapter compute."""
        return weight + self.delta_weight().to(weight.dtype)

    def unmerged_weight(self, merged: Tensor) -> Tensor:
        """Inverse of :meth:`merged_weight` (exact up to float rounding)."""
        return merged - self.delta_weight().to(merged.dtype)


class AdaptedLinear(nn.Module):
    """The one wrapper for every adapted ``nn.Linear``: ``base(x) + adapter(x)``.

    ``base`` is frozen (possibly a rewritten weight, e.g. PiSSA's residual).
    ``merge()`` folds the adapter into the base weight, ``unmerge()`` takes it
    out again, and ``disabled`` runs the frozen base alone.
    """

    def __init__(self, base: nn.Linear, adapter: Adapter):
        super().__init__()
        self.base = base
        self.adapter = adapter
        self.merged = False
        self.disabled = False
        for p in base.parameters():
            p.requires_grad_(False)

    @property
    def weight(self) -> Tensor:  # some model code reads layer.weight (dtype/device checks)
        return self.base.weight

    @property
    def bias(self) -> Tensor | None:
        return self.base.bias

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def forward(self, x: Tensor) -> Tensor:
        if self.merged or self.disabled:
            return self.base(x)
        return self.adapter(x, self.base)

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.base.weight.copy_(self.adapter.merged_weight(self.base.weight))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base.weight.copy_(self.adapter.unmerged_weight(self.base.weight))
            self.merged = False

    def extra_repr(self) -> str:
        return f"adapter={type(self.adapter).__name__}, merged={self.merged}"


def factor_gram_distances(b: Tensor, a: Tensor) -> tuple[Tensor, Tensor]:
    """``(||A A^T - I||_F, ||B^T B - I||_F)`` of factors B (m x r), A (r x n), in fp32, differentiable:
    how far A's rows and B's columns are from orthonormal (SORSA's and AdaLoRA's regularizer, not squared)."""
    a, b = a.float(), b.float()
    eye = torch.eye(a.shape[0], device=a.device)
    return torch.linalg.matrix_norm(a @ a.T - eye), torch.linalg.matrix_norm(b.T @ b - eye)


def adapted_layers(model: nn.Module) -> dict[str, AdaptedLinear]:
    """Every AdaptedLinear of a model, by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, AdaptedLinear)}


def factor_pairs(model: nn.Module) -> dict[str, tuple[Tensor, Tensor]]:
    """``(B, A)`` of every adapted layer whose adapter has factor matrices, by layer name."""
    pairs = {}
    for name, layer in adapted_layers(model).items():
        factors = layer.adapter.factors()
        if factors is not None:
            pairs[name] = factors
    return pairs


def merge(model: nn.Module) -> None:
    for layer in adapted_layers(model).values():
        layer.merge()


def unmerge(model: nn.Module) -> None:
    for layer in adapted_layers(model).values():
        layer.unmerge()


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def select_modules(
    model: nn.Module, targets: str | Sequence[str] | None, defaults: Sequence[str]
) -> list[str]:
    """Names of the ``nn.Linear`` modules to adapt.

    ``targets`` is a list of names (a module matches when its name equals the
    target or ends with ``.target``, as in PEFT), one regular expression
    (full match on the module name), or None for the architecture's defaults.
    """
    chosen = list(defaults) if targets is None else targets
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if isinstance(chosen, str):
        try:
            pattern = re.compile(chosen)
        except re.error as exc:
            raise UserError(f"method.target_modules='{chosen}' is not a valid regex ({exc})") from None
        names = [n for n in linears if pattern.fullmatch(n)]
    else:
        wanted = [str(t) for t in chosen]
        names = [n for n in linears if any(n == t or n.endswith("." + t) for t in wanted)]
    if not names:
        examples = ", ".join(sorted({n.split(".")[-1] for n in linears})[:8])
        raise UserError(
            f"method.target_modules={chosen!r} matches no Linear layer of this model; "
            f"Linear names end in: {examples}"
        )
    return names


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


class Method:
    """How a model is adapted and trained.

    The training loop calls, in order: :meth:`prepare` once, :meth:`on_train_begin`
    before the first step, then per step :meth:`loss_terms` (added to the task
    loss), backward, :meth:`on_after_backward`, gradient clipping,
    :meth:`on_before_optimizer_step`, the optimizer step,
    :meth:`on_after_optimizer_step`. :meth:`state_dict` / :meth:`load_state_dict`
    carry method state through checkpoints; :meth:`final_ranks` is recorded in the
    run folder when the run completes.

    ``provides`` says what regularizers may ask of the method (see
    :mod:`peftlab.regularizers.base`): every method can run the pretrained
    function (``reference_outputs``) and report its weight changes
    (``weight_change``); methods whose adapters have factor matrices add
    ``factors``. It is a class attribute so that a regularizer that does not fit
    can name the methods it fits without building any.
    """

    provides: frozenset[str] = frozenset({"reference_outputs", "weight_change"})
    #: True when the method holds some of its trainable parameters still for whole steps
    #: (e.g. a frozen half per round): a few steps then need not move every trainable tensor.
    holds_parameters_still: bool = False
    #: True when :meth:`on_after_backward` replaces the gradients and clipping must still be
    #: decided by the norm of the gradients backward produced (LoRA-Pro: its adjusted gradients
    #: are many times larger than the raw ones, and clipping them by their own norm would stall
    #: training). The loop then measures the norm before the hook and scales after it.
    clips_by_raw_gradient_norm: bool = False
    #: False for methods whose gradient arithmetic cannot run on loss-scaled fp16 gradients;
    #: ``trainer.precision=fp16`` is then refused before anything is loaded.
    supports_fp16: bool = True

    def __init__(self, **unused: Any):
        if unused:
            raise UserError(f"unknown method option(s): {', '.join(sorted(unused))}")
        self.initial: dict[str, Tensor] = {}
        self.optimizer, self.total_steps, self.grad_accum = None, 0, 1  # until on_train_begin() says otherwise

    # -- set-up -----------------------------------------------------------------
    def calibration_request(self, model: nn.Module, *, target_defaults: Sequence[str]) -> Any:
        """What a data-driven method needs to know about its layer inputs before it adapts ``model``.

        None (the default) for methods that need nothing; else a
        ``peftlab.calibration.Request`` (statistic, layers, data). The shared
        calibration pass computes it once (cached on disk) and :meth:`prepare`
        receives the result as ``calibration``: a mapping of layer name to tensors.
        """
        return None

    def prepare(
        self,
        model: nn.Module,
        *,
        target_defaults: Sequence[str] = (),
        head_modules: Sequence[str] = (),
        calibration: Any = None,
    ) -> None:
        """Adapt ``model`` in place and choose its trainable parameters."""
        self.adapt(model, target_defaults=target_defaults, calibration=calibration)
        for name, module in model.named_modules():
            if name and any(name == h or name.endswith("." + h) for h in head_modules):
                for p in module.parameters():
                    p.requires_grad_(True)
        self.snapshot(model)

    def adapt(self, model: nn.Module, *, target_defaults: Sequence[str], calibration: Any) -> None:
        raise NotImplementedError

    def snapshot(self, model: nn.Module) -> None:
        """Remember the initial value of every trainable parameter (the pretrained function)."""
        self.initial = {n: p.detach().clone() for n, p in trainable_parameters(model).items()}

    @contextlib.contextmanager
    def reference(self, model: nn.Module) -> Iterator[None]:
        """Run the pretrained function inside this block (no gradients).

        Trainable parameters are swapped for their initial values and restored
        on exit; merged layers are unmerged for the block.
        """
        layers = [layer for layer in adapted_layers(model).values() if layer.merged]
        params = trainable_parameters(model)
        saved = {}
        with torch.no_grad():
            for layer in layers:
                layer.unmerge()
            try:
                for name, value in self.initial.items():
                    if name in params:
                        saved[name] = params[name].data
                        params[name].data = value.to(saved[name].device)
                yield
            finally:
                for name, data in saved.items():
                    params[name].data = data
                for layer in layers:
                    layer.merge()

    def weight_changes(self, model: nn.Module) -> dict[str, Tensor]:
        """``W - W_pretrained`` of every matrix the method trains, by name, differentiable.

        By default: every trainable 2-D parameter minus its initial value (full
        fine-tuning, methods that train weights in place).
        """
        params = trainable_parameters(model)
        return {n: p - self.initial[n].to(p.device, p.dtype) for n, p in params.items()
                if p.ndim == 2 and n in self.initial}

    # -- training hooks ---------------------------------------------------------
    def on_train_begin(self, model: nn.Module, *, optimizer: Any = None, total_steps: int = 0,
                       grad_accum: int = 1) -> None:
        """Once before the first step (also on a resume, after the checkpoint is loaded): how the loop trains.

        ``optimizer`` is the (unwrapped) optimizer, ``total_steps`` the run's length in
        optimizer steps, ``grad_accum`` the micro-batches per step. Kept as attributes
        for the rules that need them: a gradient added once per step must be scaled
        like the accumulated loss (SORSA); redrawn or newly frozen parameters lose
        their optimizer moments (HFT, SaRA, SST), full-size moments live in the
        optimizer's state (LoRA-Pro); a schedule must fit the run (AdaLoRA). Hooks run
        between steps, so editing ``optimizer.state`` there is safe.
        """
        self.optimizer, self.total_steps, self.grad_accum = optimizer, int(total_steps), int(grad_accum)

    def memory_bytes(self, model: nn.Module) -> dict[str, int]:
        """Memory the method keeps beyond the parameters, their gradients and the configured
        optimizer's moments (e.g. full-size moments per layer), by name; reported by
        ``--dry-run`` and in the run summary."""
        return {}

    def param_groups(self, model: nn.Module, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups; by default every trainable parameter, one group."""
        return [{"params": list(trainable_parameters(model).values()), "lr": lr, "weight_decay": weight_decay}]

    def loss_terms(self, model: nn.Module) -> dict[str, Tensor]:
        """Extra loss terms of the method itself, added to the task loss and logged."""
        return {}

    def on_after_backward(self, model: nn.Module, step: int) -> None:
        """After backward, before clipping."""

    def on_before_optimizer_step(self, model: nn.Module, step: int, base_lr: float) -> dict[str, Tensor]:
        """After clipping, right before the optimizer step; may return values to log."""
        return {}

    def on_after_optimizer_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        """After the optimizer step (e.g. rank allocation, re-orthonormalisation)."""

    def final_ranks(self, model: nn.Module) -> dict[str, int]:
        """The rank each adapted matrix ends with, by module name; empty when ranks are fixed.

        For methods that choose ranks per layer (AdaLoRA's budget allocation, EVA's
        redistribution): a completed run writes them to ``ranks.json``, which
        ``peftlab show`` prints and ``peftlab compare --plot`` draws.
        """
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Tensors the method keeps (saved as safetensors next to the trained weights)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class AdapterMethod(Method):
    """A method made of per-layer adapters on target Linears.

    Subclasses implement :meth:`make_adapter`. Options common to every adapter
    method: ``target_modules`` (names, a regex, or None for the architecture's
    defaults) and ``dropout`` on the adapter input where the adapter uses it.
    """

    def __init__(self, target_modules: str | Sequence[str] | None = None, **rest: Any):
        super().__init__(**rest)
        self.target_modules = target_modules
        self.initial_deltas: dict[str, Tensor] | None = None  # nonzero weight_change() at init, by layer

    def weight_changes(self, model: nn.Module) -> dict[str, Tensor]:
        """Each adapted layer's ``Adapter.weight_change`` minus its value at initialisation, by layer name.

        The initial changes are computed once, in the pretrained function, and only
        the nonzero ones are kept (a base-rewriting adapter such as PiSSA starts at
        ``s B0 A0``; LoRA and DoRA start at 0).
        """
        layers = adapted_layers(model)
        if self.initial_deltas is None:
            with self.reference(model):
                deltas = {n: layer.adapter.weight_change(layer.base.weight).detach().clone()
                          for n, layer in layers.items()}
            self.initial_deltas = {n: d for n, d in deltas.items() if bool(d.ne(0).any())}
        changes = {}
        for name, layer in layers.items():
            delta = layer.adapter.weight_change(layer.base.weight)
            start = self.initial_deltas.get(name)
            changes[name] = delta if start is None else delta - start.to(delta.dtype)
        return changes

    def make_adapter(self, layer: nn.Linear, name: str) -> Adapter:
        raise NotImplementedError

    def targets(self, model: nn.Module, target_defaults: Sequence[str]) -> list[str]:
        """The Linear layers to adapt; a method whose data leave some layers without an adapter
        (EVA's rank 0) narrows them here."""
        return select_modules(model, self.target_modules, target_defaults)

    def adapt(self, model: nn.Module, *, target_defaults: Sequence[str], calibration: Any = None) -> None:
        names = self.targets(model, target_defaults)
        for p in model.parameters():
            p.requires_grad_(False)
        for name in names:
            layer = model.get_submodule(name)
            adapter = self.make_adapter(layer, name).to(device=layer.weight.device)
            inputs = calibration.get(name) if isinstance(calibration, Mapping) else None
            with torch.no_grad():
                new_base = adapter.initialize(layer.weight.detach(), inputs)
                if new_base is not None:
                    layer.weight.copy_(new_base.to(layer.weight.dtype))
            # Trainable adapters stay fp32 on a half-precision model (PEFT's autocast_adapter_dtype):
            # an optimizer update in bf16/fp16 loses steps smaller than the weight's rounding step.
            adapter.to(dtype=torch.promote_types(layer.weight.dtype, torch.float32))
            # A new module starts in train mode; follow the layer it replaces so that
            # adapter dropout is off in a model adapted in eval mode.
            replace_module(model, name, AdaptedLinear(layer, adapter).train(layer.training))


def check_rank(rank: int, layer: nn.Linear, name: str, option: str = "method.rank") -> None:
    """A rank must be >= 1 and at most min(m, n) of the layer it adapts."""
    limit = min(layer.in_features, layer.out_features)
    if rank > limit:
        raise UserError(
            f"{option}={rank} is larger than layer '{name}' ({layer.out_features}x{layer.in_features}) allows: "
            f"use {option} <= {limit} or exclude the layer with method.target_modules"
        )


def positive_int(value: Any, option: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{option}={value} is not allowed: use an integer >= 1")
    return value


def probability(value: Any, option: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise UserError(f"{option}={value} is not allowed: use a number in [0, 1)")
    return float(value)
