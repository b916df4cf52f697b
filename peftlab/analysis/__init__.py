"""Spectral diagnostics of fine-tuned weights (intruder dimensions, RankMe, norms, overlap).

Importing this package imports torch; the CLI imports it only inside the
commands that analyse weights.
"""

from peftlab.analysis.spectral import (
    DEFAULT_EPSILONS,
    analyze_layers,
    frobenius_norm,
    intruder_curve,
    intruder_dimensions,
    rankme,
    spectral_norm,
    subspace_overlap,
)

__all__ = [
    "DEFAULT_EPSILONS",
    "analyze_layers",
    "frobenius_norm",
    "intruder_curve",
    "intruder_dimensions",
    "rankme",
    "spectral_norm",
    "subspace_overlap",
]
