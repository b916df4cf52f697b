"""Build an experiment from a composed config: data, model, method, regularizers.

Also saves a run's adapter and rebuilds a trained model from a run folder.
Every component is built from its config node's ``_target_``; nothing here
knows which method, dataset or model it is.

The adapter folder holds ``adapter.safetensors`` (every trainable parameter by
name), ``method_state.safetensors`` (tensors a method keeps, e.g. masks) when
the method has state, and ``adapter_config.json`` (what rebuilds the model: the
resolved config, the label names, the parameter names). Rebuilding re-runs the
method's deterministic initialisation on the pretrained weights and then loads
the trained values.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from peftlab.calibration import prepare as calibrate
from peftlab.config import build, regularizer_nodes
from peftlab.errors import UserError
from peftlab.layout import ADAPTER_CONFIG_FILE, ADAPTER_DIR
from peftlab.runs import atomic_write_json, write_bytes
from peftlab.methods.base import Adapter, Method, adapted_layers, trainable_parameters
from peftlab.models import LoadedModel
from peftlab.tasks.base import Task

ADAPTER_FILE = "adapter.safetensors"
METHOD_STATE_FILE = "method_state.safetensors"
INITIAL_FILE = "initial.safetensors"


@dataclasses.dataclass
class Experiment:
    cfg: DictConfig
    loaded: LoadedModel
    method: Method
    regularizers: list
    task: Task
    splits: Any = None  # tokenized DatasetDict (train/validation/test), None when built without data
    calibration: Any = None  # the calibration statistics the method was prepared with (data-driven methods)

    @property
    def model(self) -> nn.Module:
        return self.loaded.model

    @property
    def tokenizer(self) -> Any:
        return self.loaded.tokenizer

    @property
    def labels(self) -> list[str]:
        """Class names (empty for tasks without classes)."""
        return self.task.labels


#: Runs made before tasks existed were all sequence classification.
_CLASSIFICATION = {"_target_": "peftlab.tasks.classification.Classification"}


def build_task(cfg: DictConfig) -> Task:
    node = cfg.get("task")
    if node is None:
        return build(OmegaConf.create({**_CLASSIFICATION, "metric": str(cfg.trainer.metric)}))
    return build(node)


def build_experiment(cfg: DictConfig, *, with_data: bool = True, labels: list[str] | None = None) -> Experiment:
    """Data (tokenized, cached), model with the task's head, adapted by the method, and the regularizers.

    ``labels`` (the class names a trained run recorded) spare reading the dataset
    when ``with_data`` is false.
    """
    method: Method = build(cfg.method)
    if str(cfg.trainer.precision) == "fp16" and not method.supports_fp16:
        raise UserError(f"the method {type(method).__name__} does not support trainer.precision=fp16: "
                        "use trainer.precision=bf16 or fp32")
    task = build_task(cfg)
    task.check_metric(str(cfg.trainer.metric))
    regularizers = [build(node, name=name) for name, node in regularizer_nodes(cfg).items()]
    for reg in regularizers:
        reg.check(method)  # a regularizer the method cannot serve fails before any data or model is loaded
    raw = None
    if with_data or labels is None:
        raw = build(cfg.dataset, seed=int(cfg.seed))
        task.read_labels(raw)
    if labels is not None:
        task.load_state({"labels": labels})
    loaded: LoadedModel = build(cfg.model, head=task.head, seed=int(cfg.seed), **task.model_kwargs())
    task.check_model(loaded.model, str(cfg.model.get("name")))
    splits = task.tokenize(raw, loaded.tokenizer, loaded.max_length) if with_data else None
    calibration = calibrate(method, loaded, cfg, task, splits)  # None unless the method asks for statistics
    torch.manual_seed(int(cfg.seed))  # adapter inits (e.g. LoRA's A) are drawn from the run's seed
    method.prepare(loaded.model, target_defaults=loaded.target_defaults, head_modules=loaded.head_modules,
                   calibration=calibration)
    for reg in regularizers:
        reg.setup(loaded.model, method)
    return Experiment(cfg, loaded, method, regularizers, task, splits, calibration)


def parameter_table(model: nn.Module) -> list[dict[str, Any]]:
    """Trainable and total parameters per module type (the module that owns them)."""
    trainable: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for module in model.modules():
        kind = type(module).__name__
        for p in module.parameters(recurse=False):
            total[kind] += p.numel()
            if p.requires_grad:
                trainable[kind] += p.numel()
    return [
        {"module": k, "trainable": trainable[k], "total": total[k]}
        for k in sorted(total, key=lambda k: (-trainable[k], -total[k]))
    ]


def count_parameters(model: nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def frozen_fingerprint(model: nn.Module) -> str:
    """A hash of the frozen weights a checkpoint does not store (they are rebuilt from their source).

    Bases rewritten by an adapter (PiSSA's residual, ...) are left out: they are
    restored from the saved initial values, and a re-derived SVD on another
    machine may differ from the original in the last bits.
    """
    import hashlib

    rewritten = {f"{name}.base.weight" for name, layer in adapted_layers(model).items() if layer.adapter.rewrites_base}
    digest = hashlib.blake2b(digest_size=16)
    for name, p in model.named_parameters():
        if not p.requires_grad and name not in rewritten:
            digest.update(name.encode())
            digest.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def trained_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a run must keep: the trainable parameters and the adapters' own buffers.

    Adapter buffers (e.g. SALT's singular vectors) are saved because trained
    values only make sense in the exact basis they were trained in; a
    recomputed SVD may flip signs on another machine.
    """
    tensors = dict(trainable_parameters(model))
    for name, module in model.named_modules():
        if isinstance(module, Adapter):
            for bname, buf in module.named_buffers(recurse=False):
                if bname not in module._non_persistent_buffers_set:
                    tensors[f"{name}.{bname}"] = buf
    return tensors


def initial_of_rewriting_adapters(model: nn.Module, method: Method) -> dict[str, torch.Tensor]:
    """Initial values of adapters that rewrote their base weight (PiSSA's B0, A0, ...).

    With them a rebuild restores the exact residual ``W - delta(initial)`` even when
    the initialisation is random (randomized SVD) or differs across machines.
    """
    out = {}
    for lname, layer in adapted_layers(model).items():
        if layer.adapter.rewrites_base:
            for pname, _ in layer.adapter.named_parameters():
                key = f"{lname}.adapter.{pname}"
                if key in method.initial:
                    out[key] = method.initial[key].detach().to("cpu").contiguous()
    return out


def _restore_residuals(model: nn.Module, method: Method, initial: dict[str, torch.Tensor],
                       buffers: dict[str, torch.Tensor]) -> None:
    """Re-derive each rewritten base as ``unmerge(merge(rebuilt), saved initial)``.

    Skipped when the rebuild drew the very initial values that were saved (same
    machine, same seed): the rebuilt base is then already bit-identical, and
    merging then unmerging would round it.
    """
    if all(key in method.initial and torch.equal(method.initial[key].cpu(), value) for key, value in initial.items()):
        return
    params = dict(model.named_parameters())
    named_buffers = dict(model.named_buffers())
    with torch.no_grad():
        for lname, layer in adapted_layers(model).items():
            if not layer.adapter.rewrites_base:
                continue
            original = layer.adapter.merged_weight(layer.base.weight)  # W, from the rebuild's own init
            prefix = f"{lname}.adapter."
            for key, value in {**buffers, **initial}.items():
                if key.startswith(prefix):
                    target = params.get(key, named_buffers.get(key))
                    target.copy_(value.to(target.dtype))
                    if key in method.initial:
                        method.initial[key] = value.to(method.initial[key].device, method.initial[key].dtype)
            layer.base.weight.copy_(layer.adapter.unmerged_weight(original))


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """``safetensors`` file of ``tensors`` (written by ``runs.write_bytes``: umask modes, clear errors)."""
    write_bytes(path, safetensors_bytes(tensors))


def write_trained(exp: Experiment, folder: Path) -> list[str]:
    """Write what training changed into ``folder``: trained tensors, rewriting adapters'
    initial values, the method's state. Returns the trained tensors' names."""
    folder = Path(folder)
    weights = {n: t.detach().to("cpu").contiguous() for n, t in trained_tensors(exp.model).items()}
    save_tensors(weights, folder / ADAPTER_FILE)
    initial = initial_of_rewriting_adapters(exp.model, exp.method)
    if initial:
        save_tensors(initial, folder / INITIAL_FILE)
    state = {k: v.detach().to("cpu").contiguous() for k, v in exp.method.state_dict().items()}
    if state:
        save_tensors(state, folder / METHOD_STATE_FILE)
    return sorted(weights)


def read_trained(exp: Experiment, folder: Path, what: str) -> None:
    """Load what ``write_trained`` wrote into the rebuilt experiment (``what`` names it in errors)."""
    folder = Path(folder)
    weights = load_file(str(folder / ADAPTER_FILE))
    if (folder / INITIAL_FILE).is_file():
        buffers = {k: v for k, v in weights.items() if k in dict(exp.model.named_buffers())}
        _restore_residuals(exp.model, exp.method, load_file(str(folder / INITIAL_FILE)), buffers)
    params = {**dict(exp.model.named_parameters()), **dict(exp.model.named_buffers())}
    missing = [n for n in weights if n not in params]
    if missing:
        raise UserError(f"{what} does not fit its model (e.g. '{missing[0]}'): was it edited?")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value.to(params[name].dtype))
    state_file = folder / METHOD_STATE_FILE
    if state_file.is_file():
        exp.method.load_state_dict(load_file(str(state_file)))


def save_adapter(exp: Experiment, folder: Path) -> None:
    """Write the trained parameters and what rebuilds them (atomically, via a temp folder)."""
    import shutil

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        names = write_trained(exp, tmp)
        info = {
            "config": OmegaConf.to_container(exp.cfg, resolve=True),
            "labels": exp.labels,
            "parameters": names,
            "source": exp.loaded.source,
        }
        atomic_write_json(tmp / ADAPTER_CONFIG_FILE, info)
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_trained(run_path: Path, *, with_data: bool = False) -> Experiment:
    """Rebuild a run's trained model from the pretrained weights and its adapter folder."""
    folder = Path(run_path) / ADAPTER_DIR
    info_file = folder / ADAPTER_CONFIG_FILE
    if not info_file.is_file():
        raise UserError(f"run '{run_path}' has no adapter yet (it did not finish): resume it or pick another run")
    info = json.loads(info_file.read_text())
    cfg = OmegaConf.create(info["config"])
    exp = build_experiment(cfg, with_data=with_data, labels=info["labels"])
    read_trained(exp, folder, f"adapter of '{run_path}'")
    return exp


def load_trained_on(run_path: Path, dataset: DictConfig, name: str) -> Experiment:
    """A run's trained model with the splits of another dataset (``dataset``: a dataset config node).

    The model is rebuilt exactly as :func:`load_trained` does (a data-driven method's
    calibration still reads the run's own data); only the evaluated splits change.
    """
    exp = load_trained(run_path)
    raw = exp.task.adopt(build(dataset, seed=int(exp.cfg.seed)), name)
    splits = exp.task.tokenize(raw, exp.loaded.tokenizer, exp.loaded.max_length)
    return dataclasses.replace(exp, splits=splits)
