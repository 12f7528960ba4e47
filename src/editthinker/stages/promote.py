"""Stage 8, promote: register the challenger checkpoint and make it champion if it beats the champion.

The challenger's metric is read from the evaluate stage's summary.json (`challenger.<primary_metric>`); the
champion's from the metrics stored when it was registered. The challenger is promoted when there is no
champion, or when it beats the champion by more than `promote.margin`. Both numbers must come from the same
benchmark (world, editors, judge and evaluate params): a champion scored on another benchmark is not compared,
and the challenger is registered but not promoted. Every call appends its decision to the registry's log.

The registry is a local directory, or S3 when its location is an `s3://bucket/prefix` URI (registry.py,
`open_registry`). The rule (`judge`) is the same for both: a local registry runs it under its lock, an S3
registry inside a compare-and-swap of the champion alias, re-running it when another promotion won the race.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from editthinker.config import Params
from editthinker.lineage import code_version, hash_path
from editthinker.registry import RegistryBackend, open_registry

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


class Verdict(NamedTuple):
    beats: bool
    reason: str
    champion_metric: float | None


def judge(
    params: Params,
    reg: RegistryBackend,
    champion: str | None,
    challenger_sha256: str,
    challenger_metric: float,
) -> Verdict:
    """The promotion rule, for `run` and `challenge` alike: does the challenger beat `champion`?"""
    cfg = params.promote
    if champion is None:
        return Verdict(True, "no champion yet", None)
    rec = reg.registered(champion)
    champion_metric = rec.get("metrics", {}).get(cfg.primary_metric)
    if rec.get("checkpoint_sha256") == challenger_sha256:
        return Verdict(False, f"{champion} is already the champion", champion_metric)
    same = rec.get("benchmark_sha256") == params.section_hash(*BENCHMARK_SECTIONS)
    beats, reason = decide(cfg.primary_metric, cfg.margin, challenger_metric, champion_metric, same)
    return Verdict(beats, reason, champion_metric)


def run(params: Params, checkpoint: Path, eval_dir: Path, registry: str | Path) -> dict[str, Any]:
    """Register the checkpoint in `registry` (a directory or an s3://bucket/prefix URI); promote it if it wins."""
    cfg = params.promote
    metric = cfg.primary_metric
    summary, metrics = read_challenger_metrics(eval_dir, metric)
    registered = {
        "eval_summary_sha256": hash_path(summary),
        "metrics": metrics,
        "benchmark_sha256": params.section_hash(*BENCHMARK_SECTIONS),
        "registered_by": code_version(),
    }
    reg = open_registry(registry, params.s3)
    with reg.transaction():
        version, created = reg.register(Path(checkpoint), registered)
        sha = reg.registered(version)["checkpoint_sha256"]
        seen: dict[str, Any] = {}

        def beats(current: str | None) -> bool:  # an S3 registry may ask again after a lost race
            seen.update(previous=current, verdict=judge(params, reg, current, sha, metrics[metric]))
            return bool(seen["verdict"].beats)

        reg.update_champion(version, beats)
        verdict: Verdict = seen["verdict"]
        previous = seen["previous"]
        decision = {
            "version": version,
            "registered_new": created,
            "promoted": verdict.beats,
            "reason": verdict.reason,
            "champion": version if verdict.beats else previous,
            "previous_champion": previous,
            "metric": metric,
            "margin": cfg.margin,
            "challenger_metric": metrics[metric],
            "champion_metric": verdict.champion_metric,
            "checkpoint_sha256": sha,
            "eval_summary_sha256": registered["eval_summary_sha256"],
        }
        reg.log_decision({**decision, "time": datetime.now(UTC).isoformat(timespec="seconds")})
    return decision


def challenge(params: Params, checkpoint: Path, eval_dir: Path, registry: str | Path) -> dict[str, Any]:
    """Would `run` promote this checkpoint now? Reads the registry, writes nothing (a pipeline's gate).

    `run` decides again under the registry's lock (or compare-and-swap on S3), so a champion that changed in
    between is still respected.
    """
    metric = params.promote.primary_metric
    _, metrics = read_challenger_metrics(eval_dir, metric)
    reg = open_registry(registry, params.s3)
    previous = reg.champion()
    verdict = judge(params, reg, previous, hash_path(Path(checkpoint)), metrics[metric])
    return {
        "beats_champion": verdict.beats,
        "reason": verdict.reason,
        "champion": previous,
        "metric": metric,
        "challenger_metric": metrics[metric],
        "champion_metric": verdict.champion_metric,
    }
