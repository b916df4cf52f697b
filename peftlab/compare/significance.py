"""How sure a comparison is: confidence intervals and a test of each row against the best.

The best row is chosen on validation (:func:`~peftlab.compare.grouping.mark_best`);
these statistics are about the reported **test** metric over seeds:

* ``test_ci``: the 95% confidence interval of the mean, ``mean ± t(0.975, n-1) s / sqrt(n)``
  (Student t; needs n >= 2);
* ``p_vs_best``: Welch's two-sided t test of the row's test values against the best
  row's (unequal variances; needs n >= 2 on both sides). Welch rather than a paired test:
  configurations need not share seeds, and when they do the pairing is by seed number
  only, not by anything the runs share beyond it;
* ``p_holm_vs_best``: the same p values adjusted for the number of rows tested against
  the best (Holm's step-down method, :func:`holm`). A table of m rows makes m - 1 tests
  against one best row; at ``ALPHA`` each, some would "differ" by chance alone. Holm
  keeps the chance of any false "differs" in the table at ``ALPHA`` and is never less
  powerful than Bonferroni;
* ``g_vs_best``: Hedges' g, the standardized mean difference (row minus best) with the
  small-sample correction ``1 - 3 / (4 (n1 + n2) - 9)``.

A difference is called significant when its Holm-adjusted p is below ``ALPHA``. With
three seeds these tests have little power: "not distinguishable" is the honest reading
of most small gaps.
scipy is imported only when a statistic is computed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

ALPHA = 0.05


def finite(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float] | None:
    """The two-sided ``level`` confidence interval of the mean (Student t), or None below two values."""
    from scipy import stats

    vals = finite(values)
    if len(vals) < 2:
        return None
    n = len(vals)
    mean = sum(vals) / n
    sem = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1) / n)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sem
    return mean - half, mean + half


def welch_p(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided p of Welch's t test of ``a`` against ``b``; None below two values on a side.

    Two samples without any spread and the same mean give p = 1, with different
    means p = 0 (the t statistic is infinite).
    """
    from scipy import stats

    x, y = finite(a), finite(b)
    if len(x) < 2 or len(y) < 2:
        return None
    if _variance(x) == 0 and _variance(y) == 0:
        return 1.0 if sum(x) / len(x) == sum(y) / len(y) else 0.0
    return float(stats.ttest_ind(x, y, equal_var=False).pvalue)


def hedges_g(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Hedges' g of ``a`` minus ``b`` (pooled sample std, small-sample corrected); None when undefined."""
    x, y = finite(a), finite(b)
    n1, n2 = len(x), len(y)
    if n1 < 2 or n2 < 2:
        return None
    pooled = math.sqrt(((n1 - 1) * _variance(x) + (n2 - 1) * _variance(y)) / (n1 + n2 - 2))
    if pooled == 0:
        return None
    d = (sum(x) / n1 - sum(y) / n2) / pooled
    return d * (1 - 3 / (4 * (n1 + n2) - 9))


def holm(ps: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of ``ps``, in their order; None stays None and is not counted.

    With the m defined p values sorted ascending, ``p_(1) <= ... <= p_(m)``, the adjusted
    ``p~_(i) = max over j <= i of min(1, (m - j + 1) p_(j))``: the smallest is multiplied
    by m, the next by m - 1, and the running maximum keeps the order of the raw values.
    """
    defined = sorted((p, i) for i, p in enumerate(ps) if p is not None)
    m = len(defined)
    out: list[float | None] = [None] * len(ps)
    running = 0.0
    for rank, (p, i) in enumerate(defined):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def _variance(vals: Sequence[float]) -> float:
    mean = sum(vals) / len(vals)
    return sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)


def verdict(p: float | None) -> str:
    """``differs`` (p < ALPHA), ``not distinguishable``, or "" when there is no test."""
    if p is None:
        return ""
    return "differs" if p < ALPHA else "not distinguishable"
