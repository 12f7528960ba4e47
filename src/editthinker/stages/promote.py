"""Stage 8, promote: register the challenger checkpoint and make it champion if it beats the champion.

The challenger's metric is read from the evaluate stage's summary.json (`challenger.<primary_metric>`); the
champion's from the metrics stored when it was registered. The challenger is promoted when there is no
champion, or when it beats the champion by more than `promote.margin`. Both numbers must come from the same
benchmark (world, editors, judge and evaluate params): a champion scored on another benchmark is not compared,
and the challenger is registered but not promoted. Every call appends its decision to decisions.jsonl.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from editthinker.config import Params
from editthinker.lineage import code_version, hash_path
from editthinker.registry import CHAMPION, Registry

SUMMARY_FILE = "summary.json"
BENCHMARK_SECTIONS = ("world", "editors", "judge", "evaluate")


def read_challenger_metrics(eval_dir: Path, metric: str) -> tuple[Path, dict[str, float]]:
    path = Path(eval_dir) / SUMMARY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"promote: evaluation summary {path} not found (the evaluate stage writes it)")
    try:
        challenger = json.loads(path.read_text())["challenger"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"promote: {path} has no readable 'challenger' section ({exc!r})") from None
    metrics = {k: float(v) for k, v in challenger.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    if metric not in metrics or not math.isfinite(metrics[metric]):
        raise ValueError(f"promote: {path} has no finite challenger.{metric} (found {sorted(challenger)})")
    return path, metrics


def decide(
    metric: str, margin: float, challenger: float, champion: float | None, same_benchmark: bool
) -> tuple[bool, str]:
    if champion is None:
        return False, f"the champion has no stored {metric}; not comparable"
    if not same_benchmark:
        return (
            False,
            "the champion was scored on another benchmark (world/editors/judge/evaluate params); not comparable",
        )
    if challenger - champion > margin:
        return True, f"{metric} {challenger:.4f} beats the champion's {champion:.4f} by more than {margin}"
    return False, f"{metric} {challenger:.4f} does not beat the champion's {champion:.4f} by more than {margin}"


def run(params: Params, checkpoint: Path, eval_dir: Path, registry: Path) -> dict[str, Any]:
    cfg = params.promote
    metric = cfg.primary_metric
    summary, metrics = read_challenger_metrics(eval_dir, metric)
    benchmark = params.section_hash(*BENCHMARK_SECTIONS)
    registered = {
        "eval_summary_sha256": hash_path(summary),
        "metrics": metrics,
        "benchmark_sha256": benchmark,
        "registered_by": code_version(),
    }
    reg = Registry(registry)
    with reg.locked():
        version, created = reg.register(Path(checkpoint), registered)
        previous = reg.champion()
        champion_metric: float | None = None
        if previous is None:
            promoted, reason = True, "no champion yet"
        elif previous == version:
            champion_metric = reg.lineage(version)["registered"]["metrics"].get(metric)
            promoted, reason = False, f"{version} is already the champion"
        else:
            rec = reg.lineage(previous).get("registered", {})
            champion_metric = rec.get("metrics", {}).get(metric)
            same = rec.get("benchmark_sha256") == benchmark
            promoted, reason = decide(metric, cfg.margin, metrics[metric], champion_metric, same)
        if promoted:
            reg.set_alias(CHAMPION, version)
        decision = {
            "version": version,
            "registered_new": created,
            "promoted": promoted,
            "reason": reason,
            "champion": version if promoted else previous,
            "previous_champion": previous,
            "metric": metric,
            "margin": cfg.margin,
            "challenger_metric": metrics[metric],
            "champion_metric": champion_metric,
            "checkpoint_sha256": reg.lineage(version)["registered"]["checkpoint_sha256"],
            "eval_summary_sha256": registered["eval_summary_sha256"],
        }
        reg.log_decision({**decision, "time": datetime.now(UTC).isoformat(timespec="seconds")})
    return decision


def challenge(params: Params, checkpoint: Path, eval_dir: Path, registry: Path) -> dict[str, Any]:
    """Would `run` promote this checkpoint now? Reads the registry, writes nothing (a pipeline's gate).

    `run` decides again under the registry's lock, so a champion that changed in between is still respected.
    """
    cfg = params.promote
    metric = cfg.primary_metric
    _, metrics = read_challenger_metrics(eval_dir, metric)
    reg = Registry(registry)
    previous = reg.champion()
    champion_metric: float | None = None
    if previous is None:
        beats, reason = True, "no champion yet"
    else:
        rec = reg.lineage(previous).get("registered", {})
        champion_metric = rec.get("metrics", {}).get(metric)
        if rec.get("checkpoint_sha256") == hash_path(Path(checkpoint)):
            beats, reason = False, f"{previous} is already the champion"
        else:
            same = rec.get("benchmark_sha256") == params.section_hash(*BENCHMARK_SECTIONS)
            beats, reason = decide(metric, cfg.margin, metrics[metric], champion_metric, same)
    return {
        "beats_champion": beats,
        "reason": reason,
        "champion": previous,
        "metric": metric,
        "challenger_metric": metrics[metric],
        "champion_metric": champion_metric,
    }
