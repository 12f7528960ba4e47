"""bench/seeds.py's table: mean and spread over training seeds, paired intervals summarised honestly."""

from __future__ import annotations

import importlib.util
import statistics
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("seeds", Path(__file__).parents[1] / "bench" / "seeds.py")
assert _spec and _spec.loader
seeds = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(seeds)


def _run(train: int, world: int, rl_success: float, rl_low: float) -> dict:
    systems = {s: {"success_rate": 0.5, "overall": 5.0, "format_failures": 0} for s in seeds.SYSTEMS}
    systems["editor+rl"] = {"success_rate": rl_success, "overall": 6.0, "format_failures": 1}
    diff = {"mean": rl_success - 0.5, "low": rl_low, "high": rl_success - 0.5 + 0.02}
    paired = {p: {"success_rate": diff, "overall": {"mean": 1.0, "low": 0.5, "high": 1.5}} for p in seeds.PAIRS}
    return {"train_seed": train, "world_seed": world, "items": 400, "systems": systems, "paired": paired}


def test_table_gives_mean_and_sample_sd_and_counts_intervals_above_zero():
    runs = [_run(11, 7, 0.56, 0.01), _run(21, 7, 0.54, -0.01), _run(31, 7, 0.58, 0.03)]
    text = seeds.table(runs, [7], [11, 21, 31])
    rl = next(line for line in text.splitlines() if line.startswith("| editor+rl |"))
    assert "56.00 ± 2.00" in rl  # success % mean and sample sd over the three seeds
    assert rl.endswith("| 3 |")  # format failures summed
    pair = next(line for line in text.splitlines() if line.startswith("| editor+rl - editor |"))
    assert "+6.0 [-1.0, +10.0] | 2/3 | 0/3 |" in pair  # one run's interval includes 0, none lies below it


def test_one_seed_has_zero_spread_not_an_error():
    assert seeds.mean_sd([4.0]) == "4.00 ± 0.00"
    with pytest.raises(statistics.StatisticsError):
        seeds.mean_sd([])
