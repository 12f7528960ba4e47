"""Paired comparisons of two systems scored on the same items (tasks x editors), as a careful evaluator makes them.

Two systems run on the same benchmark items are not independent samples: comparing their success rates with
two separate intervals wastes most of the evidence and can hide a real difference (or show a false one). Here:

- `paired_difference`: the mean of the per-item differences b - a with a percentile bootstrap interval
  (items resampled with replacement, the same resample for both systems), for scores and for success (0/1);
- `mcnemar`: the exact McNemar test on the discordant pairs of a success outcome (two-sided p-value);
- `compare`: both for a pair of systems, as the dict that goes into summary.json and decides promotions.

Pure functions of their inputs; the bootstrap is seeded, so the same items give the same interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import binomtest


@dataclass(frozen=True)
class PairedDifference:
    """mean(b - a) over n paired items, with its bootstrap interval at `confidence`."""

    n: int
    mean: float
    low: float
    high: float
    confidence: float

    def above(self, margin: float = 0.0) -> bool:
        """The whole interval lies above `margin`: b beats a by more than the margin at this confidence."""
        return self.low > margin


@dataclass(frozen=True)
class McNemar:
    """Discordant pairs of a 0/1 outcome: a_only (a succeeded, b did not), b_only, and the exact p-value."""

    a_only: int
    b_only: int
    p_value: float


def _paired(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    if len(a) != len(b):
        raise ValueError(f"paired samples must have the same length ({len(a)} != {len(b)})")
    if not len(a):
        raise ValueError("paired samples are empty")
    return np.asarray(b, dtype=float) - np.asarray(a, dtype=float)


def paired_difference(
    a: Sequence[float], b: Sequence[float], confidence: float = 0.95, resamples: int = 10_000, seed: int = 0
) -> PairedDifference:
    """mean(b - a) and its percentile bootstrap interval: `resamples` resamples of the items, seeded."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), not {confidence}")
    d = _paired(a, b)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, 1000):  # in blocks: memory stays small for many items
        stop = min(start + 1000, resamples)
        idx = rng.integers(0, len(d), size=(stop - start, len(d)))
        means[start:stop] = d[idx].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return PairedDifference(len(d), float(d.mean()), float(low), float(high), confidence)


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> McNemar:
    """Exact (binomial) McNemar test of two paired 0/1 outcomes; p = 1 when no pair is discordant."""
    if len(a) != len(b):
        raise ValueError(f"paired samples must have the same length ({len(a)} != {len(b)})")
    a_only = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    b_only = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    n = a_only + b_only
    p = 1.0 if n == 0 else float(binomtest(b_only, n, 0.5, alternative="two-sided").pvalue)
    return McNemar(a_only, b_only, p)


def compare(
    a_success: Sequence[bool],
    b_success: Sequence[bool],
    a_score: Sequence[float],
    b_score: Sequence[float],
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """System b against system a on the same items: success-rate and score differences (b - a) with paired
    bootstrap intervals, and McNemar's test on success."""
    return {
        "success_rate": asdict(paired_difference(a_success, b_success, confidence, seed=seed)),
        "overall": asdict(paired_difference(a_score, b_score, confidence, seed=seed)),
        "mcnemar": asdict(mcnemar(a_success, b_success)),
    }
