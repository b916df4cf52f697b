"""The comparison statistics against hand-computed references and scipy's own functions."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from peftlab.compare.significance import hedges_g, holm, mean_ci, verdict, welch_p


def test_confidence_interval_by_hand():
    # n = 3, mean 0.8, s = 0.02 -> half width t(0.975, 2) * 0.02 / sqrt(3) with t = 4.302653
    lo, hi = mean_ci([0.78, 0.80, 0.82])
    half = 4.302652729911275 * 0.02 / math.sqrt(3)
    assert lo == pytest.approx(0.8 - half, abs=1e-9) and hi == pytest.approx(0.8 + half, abs=1e-9)
    assert mean_ci([0.8]) is None and mean_ci([0.8, float("nan")]) is None


def test_welch_p_by_hand_and_against_scipy():
    a, b = [0.82, 0.85, 0.80, 0.84], [0.76, 0.79, 0.75]
    ma, mb = sum(a) / 4, sum(b) / 3
    va = sum((x - ma) ** 2 for x in a) / 3
    vb = sum((x - mb) ** 2 for x in b) / 2
    se2 = va / 4 + vb / 3
    t = (ma - mb) / math.sqrt(se2)
    df = se2**2 / ((va / 4) ** 2 / 3 + (vb / 3) ** 2 / 2)  # Welch-Satterthwaite
    expected = 2 * stats.t.sf(abs(t), df)
    assert welch_p(a, b) == pytest.approx(expected, rel=1e-10)
    assert welch_p(b, a) == pytest.approx(expected, rel=1e-10)
    assert welch_p(a, [0.8]) is None


def test_welch_p_without_spread():
    assert welch_p([0.8, 0.8], [0.8, 0.8]) == 1.0
    assert welch_p([0.8, 0.8], [0.7, 0.7]) == 0.0


def test_hedges_g_by_hand():
    a, b = [1.0, 2.0, 3.0], [2.0, 3.0, 4.0, 5.0]
    # pooled s^2 = (2 * 1 + 3 * 1.6667) / 5 = 1.4; d = (2 - 3.5) / sqrt(1.4); J = 1 - 3 / (4 * 7 - 9)
    d = (2.0 - 3.5) / math.sqrt((2 * 1.0 + 3 * (5.0 / 3.0)) / 5)
    assert hedges_g(a, b) == pytest.approx(d * (1 - 3 / 19), rel=1e-12)
    assert hedges_g([1.0, 1.0], [1.0, 1.0]) is None


def test_verdict_reads_the_threshold():
    assert verdict(0.01) == "differs" and verdict(0.2) == "not distinguishable" and verdict(None) == ""


def test_holm_by_hand():
    # sorted: 0.005 * 4 = 0.02, 0.01 * 3 = 0.03, 0.03 * 2 = 0.06, 0.04 * 1 = 0.04 -> running max 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # None (the best row, a row without seeds) is neither adjusted nor counted: m = 2 here
    assert holm([None, 0.02, None, 0.5]) == [None, pytest.approx(0.04), None, pytest.approx(0.5)]
    assert holm([0.3, 0.6]) == [0.6, 0.6]  # capped at 1 before the running maximum
    assert holm([0.7, 0.9]) == [1.0, 1.0]
    assert holm([]) == [] and holm([None]) == [None]


def test_one_test_is_not_adjusted():
    assert holm([None, 0.03]) == [None, 0.03]
