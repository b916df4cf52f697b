"""Which way a metric improves, and which validation value ranks a run: one rule for training,
sweeps (the search objective) and compare."""

from __future__ import annotations

#: Substrings of metric names for which lower is better.
LOWER_IS_BETTER = ("loss", "perplexity", "ppl", "error")


def lower_is_better(metric: str) -> bool:
    m = str(metric).lower()
    return any(s in m for s in LOWER_IS_BETTER)


def selected_section(summary: dict) -> str:
    """The summary section that holds the validation of the checkpoint a run kept.

    ``best_validation`` when the run kept its best validation pass (``selection``
    "best"), else ``final_validation`` (``selection`` "final", or a run made
    before selection existed, whose test was measured at the final step).
    """
    return "best_validation" if summary.get("selection") == "best" else "final_validation"


def selected_validation(summary: dict, metric: str) -> float | None:
    """The validation ``metric`` of the kept checkpoint; None when missing or not finite."""
    import math

    node = summary.get(selected_section(summary))
    value = node.get(metric) if isinstance(node, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


#: Prefix of the training terms regularizers log (``reg/<name>`` raw, ``reg/<name>/weighted``).
REGULARIZER_PREFIX = "reg/"


def regularizer_terms(records: list[dict]) -> dict[str, float]:
    """The raw ``reg/<name>`` values of the last training line of a run's metrics (empty when none)."""
    for record in reversed(records):
        if record.get("split") == "train":
            return {k: float(v) for k, v in record.items() if k.startswith(REGULARIZER_PREFIX)
                    and "/" not in k[len(REGULARIZER_PREFIX):] and isinstance(v, (int, float))}
    return {}
