"""Stage 8, promote: register the challenger checkpoint and make it champion if it beats the champion.

The challenger's metric is read from the evaluate stage's summary.json (`challenger.<primary_metric>`); the
champion's from the metrics stored when it was registered. The summary must be the evaluation of the checkpoint
being promoted: its lineage names the content hash (lineage.hash_path) of the checkpoint it scored as the
challenger (`lineage.inputs.rl_checkpoint`, or the input named by `challenger_input`), and promote (and
challenge) refuse a checkpoint whose hash differs, or a summary that names none. The challenger is promoted
when there is no champion, or when it beats the champion by more than `promote.margin`. Both numbers must come
from the same benchmark (world, editors, judge and evaluate params): a champion scored on another benchmark is
not compared, and the challenger is registered but not promoted. Every call appends its decision to the registry's log.

The registry is a local directory, or S3 when its location is an `s3://bucket/prefix` URI (registry.py,
`open_registry`). The rule (`judge`) is the same for both: a local registry runs it under its lock, an S3
registry inside a compare-and-swap of the champion alias, re-running it when another promotion won the race (on
a store that ignores conditional writes, the S3 registry refuses to write unless a lock is configured). A
champion alias that names a missing version stops promote before anything is registered.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from editthinker.config import Params
from editthinker.lineage import code_version, hash_path
from editthinker.registry import CHAMPION, RegistryBackend, open_registry

SUMMARY_FILE = "summary.json"
BENCHMARK_SECTIONS = ("world", "editors", "judge", "evaluate")
# The evaluate stage's lineage input whose thinker is the challenger (editor+rl); a summary may name another
# with a top-level "challenger_input".
CHALLENGER_INPUT = "rl_checkpoint"


class EvaluationMismatch(ValueError):
    """The eval summary is not the evaluation of the checkpoint being promoted."""


class Evaluation(NamedTuple):
    """What promote reads from an eval summary: the challenger's metrics and the checkpoint they belong to."""

    summary: Path
    metrics: dict[str, float]
    checkpoint_sha256: str | None  # the content hash of the challenger checkpoint the summary scored
    checkpoint_input: str  # the lineage input that names it


def _load_summary(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"promote: evaluation summary {path} not found (the evaluate stage writes it)")
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"promote: {path} is not valid JSON ({exc})") from None
    if not isinstance(summary, dict):
        raise ValueError(f"promote: {path} is not a JSON object")
    return summary


def _challenger_metrics(path: Path, summary: dict[str, Any], metric: str) -> dict[str, float]:
    challenger = summary.get("challenger")
    if not isinstance(challenger, dict):
        raise ValueError(f"promote: {path} has no readable 'challenger' section")
    metrics = {k: float(v) for k, v in challenger.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    if metric not in metrics or not math.isfinite(metrics[metric]):
        raise ValueError(f"promote: {path} has no finite challenger.{metric} (found {sorted(challenger)})")
    return metrics


def read_evaluation(eval_dir: Path, metric: str) -> Evaluation:
    """The challenger's metrics from `<eval_dir>/summary.json`, and the hash of the checkpoint it scored."""
    path = Path(eval_dir) / SUMMARY_FILE
    summary = _load_summary(path)
    metrics = _challenger_metrics(path, summary, metric)
    name = str(summary.get("challenger_input", CHALLENGER_INPUT))
    lineage = summary.get("lineage")
    inputs = lineage.get("inputs") if isinstance(lineage, dict) else None
    sha = inputs.get(name) if isinstance(inputs, dict) else None
    return Evaluation(path, metrics, sha if isinstance(sha, str) else None, name)


def check_evaluated(evaluation: Evaluation, checkpoint: Path, checkpoint_sha256: str) -> None:
    """Refuse unless the summary scored this very checkpoint (same content hash, lineage.hash_path)."""
    where = f"lineage.inputs.{evaluation.checkpoint_input}"
    if evaluation.checkpoint_sha256 is None:
        raise EvaluationMismatch(
            f"promote: {evaluation.summary} does not name the checkpoint it evaluated (no {where}), so its metrics "
            f"cannot be bound to {checkpoint}; refusing. Re-run evaluate to write a summary with its lineage"
        )
    if evaluation.checkpoint_sha256 != checkpoint_sha256:
        raise EvaluationMismatch(
            f"promote: {evaluation.summary} is the evaluation of checkpoint sha256 {evaluation.checkpoint_sha256} "
            f"({where}), not of {checkpoint} (sha256 {checkpoint_sha256}); refusing to promote a checkpoint with "
            f"another checkpoint's metrics. Pass the eval directory of this checkpoint"
        )


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


class PromotionDecision(NamedTuple):
    """The promotion rule's answer: does the challenger beat the champion, and why."""

    beats: bool
    reason: str
    champion_metric: float | None


def judge(
    params: Params,
    reg: RegistryBackend,
    champion: str | None,
    challenger_sha256: str,
    challenger_metric: float,
) -> PromotionDecision:
    """The promotion rule, for `run` and `challenge` alike: does the challenger beat `champion`?"""
    cfg = params.promote
    if champion is None:
        return PromotionDecision(True, "no champion yet", None)
    rec = reg.registered(champion)
    champion_metric = rec.get("metrics", {}).get(cfg.primary_metric)
    if rec.get("checkpoint_sha256") == challenger_sha256:
        return PromotionDecision(False, f"{champion} is already the champion", champion_metric)
    same = rec.get("benchmark_sha256") == params.section_hash(*BENCHMARK_SECTIONS)
    beats, reason = decide(cfg.primary_metric, cfg.margin, challenger_metric, champion_metric, same)
    return PromotionDecision(beats, reason, champion_metric)


def run(params: Params, checkpoint: Path, eval_dir: Path, registry: str | Path) -> dict[str, Any]:
    """Register the checkpoint in `registry` (a directory or an s3://bucket/prefix URI); promote it if it wins."""
    cfg = params.promote
    metric = cfg.primary_metric
    evaluation = read_evaluation(eval_dir, metric)
    sha = hash_path(Path(checkpoint))
    check_evaluated(evaluation, Path(checkpoint), sha)
    metrics = evaluation.metrics
    registered = {
        "eval_summary_sha256": hash_path(evaluation.summary),
        "metrics": metrics,
        "benchmark_sha256": params.section_hash(*BENCHMARK_SECTIONS),
        "registered_by": code_version(),
    }
    reg = open_registry(registry, params.s3)
    with reg.transaction():
        _check_champion(reg)  # before registering: a broken alias must not leave a version with no decision
        version, created = reg.register(Path(checkpoint), sha, registered)
        seen: dict[str, Any] = {}

        def beats(current: str | None) -> bool:  # an S3 registry may ask again after a lost race
            seen.update(previous=current, outcome=judge(params, reg, current, sha, metrics[metric]))
            return bool(seen["outcome"].beats)

        reg.update_champion(version, beats)
        outcome: PromotionDecision = seen["outcome"]
        previous = seen["previous"]
        record = {
            "version": version,
            "registered_new": created,
            "promoted": outcome.beats,
            "reason": outcome.reason,
            "champion": version if outcome.beats else previous,
            "previous_champion": previous,
            "metric": metric,
            "margin": cfg.margin,
            "challenger_metric": metrics[metric],
            "champion_metric": outcome.champion_metric,
            "checkpoint_sha256": sha,
            "eval_summary_sha256": registered["eval_summary_sha256"],
        }
        reg.log_decision({**record, "time": datetime.now(UTC).isoformat(timespec="seconds")})
    return record


def _check_champion(reg: RegistryBackend) -> None:
    """The champion alias, if set, names a version that exists (RegistryError otherwise, saying which)."""
    if reg.champion() is not None:
        reg.registered(CHAMPION)


def challenge(params: Params, checkpoint: Path, eval_dir: Path, registry: str | Path) -> dict[str, Any]:
    """Would `run` promote this checkpoint now? Reads the registry, writes nothing (a pipeline's gate).

    `run` decides again under the registry's lock (or compare-and-swap on S3), so a champion that changed in
    between is still respected.
    """
    metric = params.promote.primary_metric
    evaluation = read_evaluation(eval_dir, metric)
    sha = hash_path(Path(checkpoint))
    check_evaluated(evaluation, Path(checkpoint), sha)
    reg = open_registry(registry, params.s3)
    previous = reg.champion()
    outcome = judge(params, reg, previous, sha, evaluation.metrics[metric])
    return {
        "beats_champion": outcome.beats,
        "reason": outcome.reason,
        "champion": previous,
        "metric": metric,
        "challenger_metric": evaluation.metrics[metric],
        "champion_metric": outcome.champion_metric,
    }
