"""A rough estimate of a run's memory before it starts (``peftlab train --dry-run``).

Weights in fp32; for every trainable parameter its gradient and two Adam
moments; activations of the transformer layers (about 34 values per token and
hidden unit in a layer, halved to the layer inputs with gradient checkpointing);
for a causal LM the logits of the output layer, which the loss computes
only at response positions (bounded here by the whole sequence); and what the
method keeps besides (``Method.memory_bytes``, e.g. LoRA-Pro's full-size moments).
"""

from __future__ import annotations

from typing import Any

MIB = 2**20


def estimate(exp: Any) -> dict[str, int]:
    """Bytes by part: weights, optimizer (gradients + moments), activations, logits, total."""
    from peftlab.experiment import count_parameters

    cfg, config = exp.cfg, exp.model.config
    t = cfg.trainer
    trainable, total = count_parameters(exp.model)
    width = 2 if t.precision in ("bf16", "fp16") else 4
    tokens = int(t.batch_size) * int(exp.loaded.max_length)
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    layers = int(getattr(config, "num_hidden_layers", 0) or 0)
    per_layer = 2 if t.gradient_checkpointing else 34  # checkpointing keeps only layer inputs (and their grad)
    parts = {
        "weights": total * 4,
        "optimizer": trainable * 4 * 3,
        "activations": tokens * hidden * layers * per_layer * width,
        "logits": tokens * int(getattr(config, "vocab_size", 0) or 0) * 4 * 2 if exp.task.head == "causal_lm" else 0,
    }
    parts.update({f"method {k}": v for k, v in exp.method.memory_bytes(exp.model).items()})
    parts["total"] = sum(parts.values())
    return parts


def describe(exp: Any) -> str:
    parts = estimate(exp)
    names = ["weights", "optimizer", "activations", "logits"] + [n for n in parts if n.startswith("method ")]
    shown = " + ".join(f"{name} {parts[name] / MIB:,.0f} MiB" for name in names if parts[name] or name != "logits")
    t = exp.cfg.trainer
    record = getattr(getattr(exp, "calibration", None), "record", None) or {}
    calibration = (f"; the calibration pass before training holds at most {record['memory_bytes'] / MIB:,.1f} MiB "
                   f"of {record['statistic']} statistics at once besides the weights" if record else "")
    return (f"estimated memory: {shown} = {parts['total'] / MIB:,.0f} MiB (batch {t.batch_size}, length <= "
            f"{exp.loaded.max_length}; optimizer = gradients + two Adam moments of the trainable parameters"
            + ("; logits bounded by every position, the loss computes them at response tokens only)"
               if parts["logits"] else ")") + calibration)
