"""Paired statistics against values computed by hand or by an independent formula."""

from __future__ import annotations

import math

import numpy as np
import pytest

from editthinker.stats import compare, mcnemar, paired_difference


def test_mcnemar_exact_p_value_by_hand() -> None:
    # 10 pairs where only b succeeds, 2 where only a does: p = 2 * P(X <= 2 | n=12, 1/2) = 2 * 79 / 4096
    a = [True] * 2 + [False] * 10 + [True] * 5 + [False] * 3
    b = [False] * 2 + [True] * 10 + [True] * 5 + [False] * 3
    r = mcnemar(a, b)
    assert (r.a_only, r.b_only) == (2, 10)
    assert r.p_value == pytest.approx(2 * (1 + 12 + 66) / 4096)


def test_mcnemar_is_symmetric_and_one_without_discordant_pairs() -> None:
    a, b = [True, False, True, False], [False, True, False, False]
    assert mcnemar(a, b).p_value == mcnemar(b, a).p_value
    assert mcnemar([True, False], [True, False]).p_value == 1.0


def test_a_constant_difference_has_a_zero_width_interval() -> None:
    d = paired_difference([1.0, 2.0, 3.0], [2.0, 3.0, 4.0])
    assert (d.mean, d.low, d.high) == (1.0, 1.0, 1.0) and d.above(0.5) and not d.above(1.0)


def test_bootstrap_interval_matches_the_normal_approximation_for_many_items() -> None:
    rng = np.random.default_rng(5)
    a = rng.normal(5.0, 2.0, 2000)
    b = a + rng.normal(0.3, 1.0, 2000)
    d = paired_difference(list(a), list(b), resamples=4000, seed=1)
    diff = b - a
    half = 1.959964 * diff.std(ddof=1) / math.sqrt(len(diff))
    assert d.mean == pytest.approx(diff.mean())
    assert d.low == pytest.approx(diff.mean() - half, abs=0.01)
    assert d.high == pytest.approx(diff.mean() + half, abs=0.01)


def test_pairing_finds_a_lift_that_two_separate_intervals_miss() -> None:
    """b succeeds on every item a does, plus 12 more of 200: separate 95% intervals overlap, the paired one
    lies above zero."""
    a = [True] * 100 + [False] * 100
    b = [True] * 112 + [False] * 88
    d = paired_difference(a, b, seed=3)
    assert d.mean == pytest.approx(0.06) and d.low > 0
    assert mcnemar(a, b).p_value < 0.001


def test_seeded_and_validated() -> None:
    a, b = [0.0, 1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0, 1.0]
    assert paired_difference(a, b, seed=7) == paired_difference(a, b, seed=7)
    with pytest.raises(ValueError, match="same length"):
        paired_difference([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="empty"):
        paired_difference([], [])
    with pytest.raises(ValueError, match="confidence"):
        paired_difference([1.0], [1.0], confidence=1.5)


def test_compare_reports_both_differences_and_the_test() -> None:
    out = compare([True, False, False], [True, True, False], [5.0, 2.0, 1.0], [5.0, 8.0, 1.0])
    assert out["success_rate"]["mean"] == pytest.approx(1 / 3)
    assert out["overall"]["mean"] == pytest.approx(2.0)
    assert out["mcnemar"] == {"a_only": 0, "b_only": 1, "p_value": 1.0}
