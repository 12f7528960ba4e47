"""95% intervals of a benchmark's metrics by bootstrap over items.

Items are resampled with replacement within their category (a stratified bootstrap), so every resample has
the benchmark's category sizes, as macro averages over categories (GEdit, ImgEdit) need; each resample is
aggregated by the benchmark's own `metrics`, and the interval is the 2.5th to 97.5th percentile.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from editthinker.benchmarks.base import ScoredItem, by


def bootstrap_intervals(
    scored: list[ScoredItem],
    metrics: Callable[[list[ScoredItem]], dict[str, float]],
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, list[float]]:
    """{metric: [low, high]} for every metric that is finite on the data; {} without items or resamples."""
    if not scored or resamples <= 0:
        return {}
    rng = np.random.default_rng(seed)
    strata = list(by(scored, lambda s: s.category).values())
    draws: dict[str, list[float]] = {}
    for _ in range(resamples):
        sample = [group[i] for group in strata for i in rng.integers(0, len(group), len(group))]
        for k, v in metrics(sample).items():
            if math.isfinite(v):
                draws.setdefault(k, []).append(v)
    return {
        k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]
        for k, v in sorted(draws.items())
        if len(v) >= resamples // 2
    }
