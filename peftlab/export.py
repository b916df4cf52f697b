"""Export a trained run: as a Hugging Face PEFT adapter, or as a merged transformers checkpoint.

``--format peft`` writes a folder that ``peft.PeftModel.from_pretrained(base, OUT)``
loads on the ORIGINAL pretrained model (``AutoModelForSequenceClassification.from_pretrained``
of the run's model with the run's label count). Two paths, chosen per run by what the
adapters say about themselves, never by the method's name:

* native: every adapter returns its PEFT form from ``Adapter.peft_native()``
  (peftlab/methods/native.py): the PEFT type, its tensors under PEFT's key names, the
  config fields it implies and PEFT's formula for the weight those tensors give on W.
  Taken when no adapter rewrites the base weight, the config fields agree across layers
  (LoRA's r and alpha may differ, through ``rank_pattern`` / ``alpha_pattern``), and
  PEFT's formula reproduces ``adapter.merged_weight(W)`` on every layer. Today: LoRA
  (and EVA, rsLoRA), DoRA (``use_dora``), MiSS in its three modes (``init_weights``
  true / ``mini`` / ``bat``) and RandLoRA (``save_projection``: the shared bases are
  written, so a load never regenerates them).
* factorised: everything else (PiSSA, MiLoRA, OLoRA, SORSA, SVFit, SALT, any future
  adapter without a PEFT form), and every run exported with ``--rank``. The weight change of each layer is

      dW = adapter.merged_weight(base) - (the same inside method.reference(model))

  i.e. W_ft - W_0, computed in fp32 and factored by an fp32 SVD into
  ``B = U_k sqrt(S_k)``, ``A = sqrt(S_k) V_k^T`` with ``lora_alpha = r`` (scale 1).
  k = min(K, numerical rank of dW), K = ``rank`` or, by default, twice the adapter's
  rank (PiSSA-like changes ``s(BA - B0A0)`` have rank <= 2r, so this is exact for
  them), or the numerical rank when the adapter has no rank. The relative error
  ``||dW - dW_k||_F / ||dW||_F`` of every layer goes into ``export_report.json``.

Trained parameters outside the adapters (the classification head) are written as
PEFT ``modules_to_save`` weights; a run that trains anything PEFT cannot hold (a
frozen-base weight, e.g. full fine-tuning) is refused with a pointer to
``--format merged``. Biases are never changed by adapters.

``--format merged`` folds every adapter into its Linear, swaps each AdaptedLinear for
its plain ``nn.Linear`` and saves an ordinary transformers checkpoint (safetensors)
plus the tokenizer, with ``id2label`` / ``label2id`` from the run.

Both formats also get ``peftlab_export.json`` (the run, its resolved config, labels,
max_length), so ``peftlab eval OUT`` can evaluate the export on the run's data
(:mod:`peftlab.exported` reads exports back; :mod:`peftlab.staged_output` writes
the folder all or nothing).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from peftlab.errors import UserError
from peftlab.export_files import (  # noqa: F401  (the names callers use)
    EXPORT_INFO_FILE,
    PEFT_CONFIG_FILE,
    PEFT_WEIGHTS_FILE,
    REPORT_FILE,
)
from peftlab.staged_output import check_output, staged

if TYPE_CHECKING:  # torch is imported inside the functions: the CLI checks paths before paying for it
    from torch import Tensor, nn

    from peftlab.experiment import Experiment
    from peftlab.methods.base import AdaptedLinear, Adapter

FORMATS = ("peft", "merged")
PEFT_PREFIX = "base_model.model."
PEFT_SHARED_PREFIX = "base_model."  # tensors a PEFT tuner shares between layers (RandLoRA's bases)


def _export_info(exp: Experiment, run_path: Path, fmt: str) -> dict[str, Any]:
    cfg = OmegaConf.to_container(exp.cfg, resolve=True)
    return {
        "format": fmt,
        "run": str(Path(run_path).resolve()),
        "method": cfg.get("method", {}).get("_target_"),
        "labels": list(exp.labels),
        "max_length": int(exp.loaded.max_length),
        "base_model": exp.loaded.source,
        "base_random_init": bool(cfg.get("model", {}).get("random_init", False)),
        "config": cfg,
    }


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, default=str) + "\n")


# --------------------------------------------------------------------------- the weight change


def weight_change(model: nn.Module, method: Any, name: str, layer: AdaptedLinear) -> tuple[Tensor, Tensor]:
    """``(dW, W_ft)`` of one layer in fp32: merged fine-tuned minus merged pretrained (``method.reference``)."""
    import torch

    with torch.no_grad():
        fine_tuned = layer.adapter.merged_weight(layer.base.weight.float()).float()
        with method.reference(model):
            pretrained = layer.adapter.merged_weight(layer.base.weight.float()).float()
    return fine_tuned - pretrained, fine_tuned


def numerical_rank(sigma: Tensor, shape: tuple[int, int], weight_norm: float) -> int:
    """Singular values of dW above the noise of computing it as a difference of two fp32 weights.

    Rounding each entry of W_ft and W_0 errs by at most eps |entry|, so the noise
    matrix has spectral norm <= ~2 eps ||W_ft||_F; the SVD itself adds
    ~max(m, n) eps sigma_1.
    """
    import torch

    if sigma.numel() == 0:
        return 0
    eps = torch.finfo(torch.float32).eps
    tol = max(4 * eps * weight_norm, max(shape) * eps * float(sigma[0]))
    return int((sigma > tol).sum())


def default_rank(adapter: Adapter) -> int | None:
    """The adapter's bound on the rank of its change (e.g. 2r for PiSSA's ``s(BA - B0A0)``); None: full."""
    return adapter.change_rank_bound()


def factorize(delta: Tensor, weight_norm: float, rank: int | None) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """``B (m x k)``, ``A (k x n)`` with ``B A`` the best rank-k approximation of ``delta``, and the layer's report."""
    import torch

    delta = delta.detach()
    u, s, vh = torch.linalg.svd(delta.float(), full_matrices=False)
    full = numerical_rank(s, tuple(delta.shape), weight_norm)
    k = full if rank is None else min(rank, full)
    k = max(k, 1)  # PEFT needs r >= 1; an unchanged layer gets a zero pair
    root = torch.sqrt(s[:k].clamp(min=0))
    if full == 0:
        root = torch.zeros_like(root)
    b = (u[:, :k] * root).contiguous()
    a = (root[:, None] * vh[:k]).contiguous()
    power = s.double() ** 2
    total = float(power.sum())
    tail = float(power[k:].sum()) if full > 0 else 0.0
    error = math.sqrt(tail / total) if total > 0 else 0.0
    return b, a, {"rank": k, "numerical_rank": full, "relative_error": error, "exact": k >= full}


# --------------------------------------------------------------------------- PEFT


def extra_trained_modules(model: nn.Module, head_names: Any = ()) -> dict[str, nn.Module]:
    """Modules to save whole next to the LoRA factors: the owners of trainable parameters outside the adapters.

    A parameter inside a head module (``head_names``, e.g. ``classifier``) is saved
    with its whole head, so a head made of several Linears (RoBERTa's
    ``classifier.dense`` / ``classifier.out_proj``) becomes one ``modules_to_save``
    entry, as PEFT wraps it. Raises a UserError for trainable parameters PEFT cannot
    hold next to LoRA (the base weight of an adapted layer, the model root).
    """
    from peftlab.methods.base import adapted_layers, trainable_parameters

    layers = adapted_layers(model)
    heads = tuple(str(h) for h in head_names)
    owners: set[str] = set()
    for pname in trainable_parameters(model):
        owner = pname.rpartition(".")[0]
        if any(owner == f"{lname}.adapter" or owner.startswith(f"{lname}.adapter.") for lname in layers):
            continue
        if any(owner == lname or owner.startswith(f"{lname}.") for lname in layers):
            raise UserError(
                f"this run trains '{pname}', a weight under an adapted layer, which a PEFT LoRA adapter cannot hold: "
                f"use --format merged"
            )
        if not owner:
            raise UserError(f"this run trains '{pname}' on the model root, which PEFT cannot hold: use --format merged")
        parts = owner.split(".")
        for i in range(1, len(parts) + 1):  # the outermost enclosing head module, if any
            prefix = ".".join(parts[:i])
            if any(prefix == h or prefix.endswith("." + h) for h in heads):
                owner = prefix
                break
        owners.add(owner)
    # Keep the outermost owners (a module and its children become one entry).
    names = sorted(owners, key=len)
    kept = [n for i, n in enumerate(names) if not any(n.startswith(p + ".") for p in names[:i])]
    return {n: model.get_submodule(n) for n in sorted(kept)}


def _factorized(model: nn.Module, method: Any, layers: dict[str, AdaptedLinear],
                rank: int | None) -> tuple[dict[str, Tensor], dict[str, Any], dict[str, dict[str, Any]]]:
    """Every layer's weight change as SVD factors of a PEFT LoRA with lora_alpha = r (scale 1)."""
    import torch

    tensors: dict[str, Tensor] = {}
    per_layer: dict[str, dict[str, Any]] = {}
    for name, layer in layers.items():
        delta, fine_tuned = weight_change(model, method, name, layer)
        k = rank if rank is not None else default_rank(layer.adapter)
        b, a, info = factorize(delta, float(torch.linalg.norm(fine_tuned)), k)
        tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = a
        tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = b
        per_layer[name] = info
    ranks = {n: v["rank"] for n, v in per_layer.items()}
    r = Counter(ranks.values()).most_common(1)[0][0]
    config = {"peft_type": "LORA", "r": int(r), "lora_alpha": int(r), "use_rslora": False,
              "rank_pattern": {n: k for n, k in ranks.items() if k != r},
              "alpha_pattern": {n: k for n, k in ranks.items() if k != r},
              "lora_dropout": 0.0, "use_dora": False, "bias": "none", "fan_in_fan_out": False,
              "init_lora_weights": True}
    return tensors, config, per_layer


def peft_export(exp: Experiment, rank: int | None = None) -> tuple[dict[str, Tensor], dict[str, Any], dict[str, Any]]:
    """``(tensors, adapter_config, report)`` of a PEFT adapter equivalent to the trained model."""
    from peftlab.methods.base import adapted_layers
    from peftlab.methods.native import native_export

    model, method = exp.model, exp.method
    layers = adapted_layers(model)
    if not layers:
        raise UserError("this run has no adapted layers (e.g. full fine-tuning): use --format merged")
    for layer in layers.values():
        layer.unmerge()
    heads = extra_trained_modules(model, exp.loaded.head_modules)
    native = native_export(layers) if rank is None else None
    if native is not None:
        layer_tensors, shared, fields, kind = native
        tensors = {f"{PEFT_PREFIX}{key}": value for key, value in layer_tensors.items()}
        tensors.update({f"{PEFT_SHARED_PREFIX}{key}": value for key, value in shared.items()})
        pattern = fields.get("rank_pattern", {})
        per_layer = {n: {"rank": pattern.get(n, fields.get("r")), "numerical_rank": None, "relative_error": 0.0,
                         "exact": True} for n in layers}
        path = f"native-{kind}"
    else:
        tensors, fields, per_layer = _factorized(model, method, layers, rank)
        path = "factorized"
    for hname, module in heads.items():
        for key, value in module.state_dict().items():
            tensors[f"{PEFT_PREFIX}{hname}.{key}"] = value.detach()
    # cloned: a tensor saved under several keys (RandLoRA's bases) must not share memory in safetensors
    tensors = {k: v.to("cpu").clone().contiguous() for k, v in tensors.items()}
    config = {
        "peft_type": fields.pop("peft_type"),
        "task_type": exp.task.peft_task_type,
        "base_model_name_or_path": exp.loaded.source,
        "revision": exp.cfg.model.get("revision") if "model" in exp.cfg else None,
        "target_modules": sorted(layers),
        "modules_to_save": sorted(heads) or None,
        "inference_mode": True,
        **fields,
    }
    errors = [v["relative_error"] for v in per_layer.values()]
    report = {
        "format": "peft",
        "path": path,
        "exact": all(v["exact"] for v in per_layer.values()),
        "max_relative_error": max(errors),
        "mean_relative_error": sum(errors) / len(errors),
        "rank": config.get("r"),
        "layers": per_layer,
    }
    return tensors, config, report


def write_peft(exp: Experiment, run_path: Path, out: Path, *, rank: int | None = None, force: bool = False) -> dict[str, Any]:
    from safetensors.torch import save_file

    if rank is not None and rank < 1:
        raise UserError(f"--rank {rank} is not allowed: use an integer >= 1")
    out = Path(out)
    check_output(out, force=force)
    tensors, config, report = peft_export(exp, rank)
    with staged(out) as tmp:
        save_file(tensors, str(tmp / PEFT_WEIGHTS_FILE), metadata={"format": "pt"})
        _write_json(tmp / PEFT_CONFIG_FILE, config)
        _write_json(tmp / REPORT_FILE, report)
        _write_json(tmp / EXPORT_INFO_FILE, _export_info(exp, run_path, "peft"))
    return report


# --------------------------------------------------------------------------- merged


def merge_to_plain(model: nn.Module) -> nn.Module:
    """Fold every adapter into its Linear and put the plain ``nn.Linear`` back (in place)."""
    from peftlab.methods.base import adapted_layers, replace_module

    for name, layer in adapted_layers(model).items():
        layer.merge()
        replace_module(model, name, layer.base)
    return model


def write_merged(exp: Experiment, run_path: Path, out: Path, *, force: bool = False) -> dict[str, Any]:
    """An ordinary transformers checkpoint of the trained model (the experiment's model is consumed)."""
    out = Path(out)
    check_output(out, force=force)
    from peftlab.methods.base import adapted_layers

    merged = len(adapted_layers(exp.model))
    model = merge_to_plain(exp.model)
    for p in model.parameters():
        p.requires_grad_(False)
    if exp.labels:
        model.config.id2label = {i: label for i, label in enumerate(exp.labels)}
        model.config.label2id = {label: i for i, label in enumerate(exp.labels)}
        model.config.num_labels = len(exp.labels)
    report = {"format": "merged", "path": "merged", "layers_merged": merged}
    with staged(out) as tmp:
        model.save_pretrained(str(tmp))
        exp.tokenizer.save_pretrained(str(tmp))
        _write_json(tmp / REPORT_FILE, report)
        _write_json(tmp / EXPORT_INFO_FILE, _export_info(exp, run_path, "merged"))
    return report
