"""Stage 8, promote: register the challenger checkpoint and make it champion if it beats the champion.

The challenger's outcomes are read from the evaluate stage's summary.json (`per_item`: each benchmark item's
success and scores, for the challenger and the editor alone); the champion's are stored with it when it is
registered. The rule is editthinker.promotion's: format failures under `promote.max_format_failure_rate`, and
beating the editor alone and the champion (with none yet, the editor alone only) paired on the same items, the
interval's lower end at `promote.confidence` above `promote.margin`; then the public-benchmark gate when
`benchmarks.gate` names one. The summary must be the evaluation of the checkpoint
being promoted: its lineage names the content hash (lineage.hash_path) of the checkpoint it scored as the
challenger (`lineage.inputs.rl_checkpoint`, or the input named by `challenger_input`), and promote (and
challenge) refuse a checkpoint whose hash differs, or a summary that names none. Champion and challenger must
come from the same benchmark (world, editors, judge and evaluate params): a champion scored on another benchmark is
not compared, and the challenger is registered but not promoted. Every call appends its decision to the registry's log.

The registry is a local directory, or S3 when its location is an `s3://bucket/prefix` URI (registry.py,
`open_registry`). The rule (`judge`) is the same for both: a local registry runs it under its lock, an S3
registry inside a compare-and-swap of the champion alias, re-running it when another promotion won the race (on
a store that ignores conditional writes, the S3 registry refuses to write unless a lock is configured). A
champion alias that names a missing version stops promote before anything is registered.

A registered version records, besides its metrics, the params values of every stage its lineage covers (the
checkpoint's training stage and the evaluation; model_card.stage_params), the git commit the registering code
runs from (None outside git) and whether that commit's stage code is the code that trained it; its model card
(README.md, model_card.render_card) is written with it.

By hand (the `editthinker registry` commands): `promote_version` makes a registered version champion, by the same
rule (it must beat the champion by more than the margin, on the same benchmark) unless forced, and `rollback`
gives the alias back to the champion before the current one, as the decision log records them. Both run in the
registry's transaction (lock, or compare-and-swap on S3) and log a decision with the reason given; a refused
request changes nothing and logs nothing.
"""

from __future__ import annotations

import getpass
import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from editthinker import promotion as rule
from editthinker.benchmarks.gate import BenchmarkMetric, benchmark_metric, gate_decision
from editthinker.config import Params
from editthinker.lineage import LINEAGE_FILE, code_version, hash_path
from editthinker.model_card import git_state, params_record, render_card
from editthinker.registry import CHAMPION, RegistryBackend, open_registry

SUMMARY_FILE = "summary.json"
BENCHMARK_SECTIONS = ("world", "editors", "judge", "evaluate")
# The evaluate stage's lineage input whose thinker is the challenger (editor+rl); a summary may name another
# with a top-level "challenger_input".
CHALLENGER_INPUT = "rl_checkpoint"
# the evaluate stage's systems (summary.json per_item) the rule pairs: the challenger and the editor alone
CHALLENGER_SYSTEM, EDITOR_ALONE = "editor+rl", "editor"


class EvaluationMismatch(ValueError):
    """The eval summary is not the evaluation of the checkpoint being promoted."""


class PromotionRefused(RuntimeError):
    """A manual promotion or a rollback that the rule or the decision log does not allow; nothing changed."""


class Evaluation(NamedTuple):
    """What promote reads from an eval summary: the challenger's metrics and the checkpoint they belong to."""

    summary: Path
    metrics: dict[str, float]
    checkpoint_sha256: str | None  # the content hash of the challenger checkpoint the summary scored
    checkpoint_input: str  # the lineage input that names it
    document: dict[str, Any]  # the whole summary, as read


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
    return Evaluation(path, metrics, sha if isinstance(sha, str) else None, name, summary)


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


def _items(summary: dict[str, Any], system: str, path: Path) -> dict[str, list[Any]]:
    found = summary.get("per_item", {})
    items = found.get(system) if isinstance(found, dict) else None
    if not isinstance(items, dict) or "item" not in items:
        raise ValueError(
            f"promote: {path} has no per-item outcomes of {system!r} (per_item.{system}); the promotion rule "
            "pairs systems item by item. Re-run evaluate to write them"
        )
    return items


def judge(
    params: Params,
    reg: RegistryBackend,
    champion: str | None,
    challenger_sha256: str,
    evaluation: Evaluation,
    gate: BenchmarkMetric | None = None,
) -> PromotionDecision:
    """The promotion rule, for `run` and `challenge` alike (editthinker.promotion): format failures under the
    limit, and beating the editor alone and the champion (none yet: the editor alone only) paired on the same
    items at promote.confidence by promote.margin; then the benchmark gate, when params set one."""
    cfg = params.promote
    champion_metric = None
    champion_items = None
    rec: dict[str, Any] = {}
    if champion is not None:
        rec = reg.registered(champion)
        champion_metric = rec.get("metrics", {}).get(cfg.primary_metric)
        if rec.get("checkpoint_sha256") == challenger_sha256:
            return PromotionDecision(False, f"{champion} is already the champion", champion_metric)
        if rec.get("benchmark_sha256") != params.section_hash(*BENCHMARK_SECTIONS):
            reason = (
                "the champion was scored on another benchmark (world/editors/judge/evaluate params); not comparable"
            )
            return PromotionDecision(False, reason, champion_metric)
        champion_items = rec.get("per_item")
        if not isinstance(champion_items, dict):
            reason = f"the champion {champion} has no stored per-item outcomes to pair with; not comparable"
            return PromotionDecision(False, reason, champion_metric)
    doc, path = evaluation.document, evaluation.summary
    checks = rule.decide(
        _items(doc, CHALLENGER_SYSTEM, path),
        _items(doc, EDITOR_ALONE, path),
        champion_items,
        champion,
        cfg.primary_metric,
        cfg.margin,
        cfg.confidence,
        cfg.max_format_failure_rate,
    )
    beats = all(c.passed for c in checks)
    reason = "; ".join(c.reason for c in checks)
    if champion is None and beats:
        reason = f"no champion yet; {reason}"
    if beats and gate is not None:
        stored = rec.get("metrics", {}).get(gate.key)
        beats, why = gate_decision(gate, stored, params.benchmarks.gate.margin if params.benchmarks.gate else 0.0)
        reason = f"{reason}; benchmark gate: {why}"
    return PromotionDecision(beats, reason, champion_metric)


def eligibility(params: Params, evaluation: Evaluation) -> dict[str, Any]:
    """The rule's checks that do not depend on a champion (format failures, beating the editor alone), stored
    with a registered version so that promoting it by hand later keeps them."""
    cfg = params.promote
    doc, path = evaluation.document, evaluation.summary
    checks = rule.decide(
        _items(doc, CHALLENGER_SYSTEM, path), _items(doc, EDITOR_ALONE, path), None, None,
        cfg.primary_metric, cfg.margin, cfg.confidence, cfg.max_format_failure_rate,
    )  # fmt: skip
    return {"passed": all(c.passed for c in checks), "reason": "; ".join(c.reason for c in checks)}


def benchmark_gate(params: Params, report: Path | None) -> BenchmarkMetric | None:
    """The challenger's metric on the public benchmark `benchmarks.gate` names (None when no gate is set)."""
    g = params.benchmarks.gate
    if g is None:
        return None
    if report is None:
        raise ValueError(
            f"promote: benchmarks.gate asks for {g.benchmark} {g.metric}; pass the benchmark report "
            "(--benchmark-report, the folder `editthinker benchmark report` wrote)"
        )
    return benchmark_metric(report, g.benchmark, g.metric, g.editor, system="thinker")


def run(
    params: Params, checkpoint: Path, eval_dir: Path, registry: str | Path, benchmark_report: Path | None = None
) -> dict[str, Any]:
    """Register the checkpoint in `registry` (a directory or an s3://bucket/prefix URI); promote it if it wins.
    Every call, promoted or refused, logs its decision with the reason."""
    cfg = params.promote
    metric = cfg.primary_metric
    evaluation = read_evaluation(eval_dir, metric)
    sha = hash_path(Path(checkpoint))
    check_evaluated(evaluation, Path(checkpoint), sha)
    gate = benchmark_gate(params, benchmark_report)
    metrics = {**evaluation.metrics, **({gate.key: gate.value} if gate else {})}
    lineage = _checkpoint_lineage(Path(checkpoint))
    registered = {
        "eval_summary_sha256": hash_path(evaluation.summary),
        "metrics": metrics,
        "per_item": _items(evaluation.document, CHALLENGER_SYSTEM, evaluation.summary),
        "eligible": eligibility(params, evaluation),
        "benchmark_sha256": params.section_hash(*BENCHMARK_SECTIONS),
        **provenance(params, lineage, evaluation.document),
    }
    card = render_card(lineage, {**registered, "checkpoint_sha256": sha}, evaluation.document)
    reg = open_registry(registry, params.s3)
    with reg.transaction():
        _check_champion(reg)  # before registering: a broken alias must not leave a version with no decision
        version, created = reg.register(Path(checkpoint), sha, registered, card)
        seen: dict[str, Any] = {}

        def beats(current: str | None) -> bool:  # an S3 registry may ask again after a lost race
            seen.update(previous=current, outcome=judge(params, reg, current, sha, evaluation, gate))
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


def _checkpoint_lineage(checkpoint: Path) -> dict[str, Any]:
    path = checkpoint / LINEAGE_FILE
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"promote: {path} is not valid JSON ({exc})") from None
    return value if isinstance(value, dict) else {}


def _training_code_matches(lineage: dict[str, Any]) -> bool | None:
    """Is the running code of the checkpoint's stage the code that trained it (same code_version digest)?"""
    stage, recorded = lineage.get("stage"), lineage.get("code_version")
    if not isinstance(stage, str) or not isinstance(recorded, str):
        return None
    try:
        return code_version(f"{__package__}.{stage}") == recorded
    except ValueError:  # not a stage of this package
        return None


def provenance(params: Params, lineage: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """What a registered record says about where the checkpoint came from: when, the params values of the
    checkpoint's stage and of its evaluation, the checkpoint's data lineage (input hashes and sizes, models), the
    registering code's version and git commit, and whether that code still is the training code."""
    found = summary.get("lineage")
    ev_lineage: dict[str, Any] = found if isinstance(found, dict) else {}
    return {
        "registered_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "registered_by": code_version(),
        "git": git_state(),
        "training_code_matches": _training_code_matches(lineage),
        "params": params_record(params, lineage, ev_lineage),
        "lineage": {
            k: lineage[k] for k in ("stage", "code_version", "inputs", "input_sizes", "models") if k in lineage
        },
    }


def _check_champion(reg: RegistryBackend) -> None:
    """The champion alias, if set, names a version that exists (RegistryError otherwise, saying which)."""
    if reg.champion() is not None:
        reg.registered(CHAMPION)


def challenge(
    params: Params, checkpoint: Path, eval_dir: Path, registry: str | Path, benchmark_report: Path | None = None
) -> dict[str, Any]:
    """Would `run` promote this checkpoint now? Reads the registry, writes nothing (a pipeline's gate).

    `run` decides again under the registry's lock (or compare-and-swap on S3), so a champion that changed in
    between is still respected.
    """
    metric = params.promote.primary_metric
    evaluation = read_evaluation(eval_dir, metric)
    sha = hash_path(Path(checkpoint))
    check_evaluated(evaluation, Path(checkpoint), sha)
    gate = benchmark_gate(params, benchmark_report)
    reg = open_registry(registry, params.s3)
    previous = reg.champion()
    outcome = judge(params, reg, previous, sha, evaluation, gate)
    return {
        "beats_champion": outcome.beats,
        "reason": outcome.reason,
        "champion": previous,
        "metric": metric,
        "challenger_metric": evaluation.metrics[metric],
        "champion_metric": outcome.champion_metric,
    }


# --- by hand: promote a registered version, roll the champion back --------------------------------------------
def _who() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name and no passwd entry (some containers)
        return None


def _stamp(record: dict[str, Any]) -> dict[str, Any]:
    return {**record, "by": _who(), "time": datetime.now(UTC).isoformat(timespec="seconds")}


def judge_registered(params: Params, reg: RegistryBackend, champion: str | None, candidate: str) -> PromotionDecision:
    """The promotion rule between two registered versions, from their records: paired on the items both were
    scored on when both records keep per-item outcomes (the margin, confidence and metric from params.promote),
    else on the stored means (versions registered before per-item outcomes were kept). A version the rule
    refused when it was registered (format failures, not beating the editor alone) stays refused."""
    cfg = params.promote
    cand = reg.registered(candidate)
    eligible = cand.get("eligible")
    if isinstance(eligible, dict) and not eligible.get("passed", False):
        return PromotionDecision(False, f"{candidate} was refused when registered: {eligible.get('reason')}", None)
    if champion is None:
        return PromotionDecision(True, "no champion yet", None)
    rec = reg.registered(champion)
    champion_metric = rec.get("metrics", {}).get(cfg.primary_metric)
    challenger_metric = cand.get("metrics", {}).get(cfg.primary_metric)
    if challenger_metric is None:
        return PromotionDecision(False, f"{candidate} has no stored {cfg.primary_metric}; not comparable", None)
    same = rec.get("benchmark_sha256") is not None and rec.get("benchmark_sha256") == cand.get("benchmark_sha256")
    mine, theirs = cand.get("per_item"), rec.get("per_item")
    if same and isinstance(mine, dict) and isinstance(theirs, dict):
        check = rule.check_beats(
            mine, theirs, f"the champion {champion}", cfg.primary_metric, cfg.margin, cfg.confidence
        )
        return PromotionDecision(check.passed, check.reason, champion_metric)
    beats, reason = decide(cfg.primary_metric, cfg.margin, challenger_metric, champion_metric, same)
    return PromotionDecision(beats, reason, champion_metric)


def promote_version(params: Params, reg: RegistryBackend, ref: str, reason: str, force: bool = False) -> dict[str, Any]:
    """Make the registered version `ref` champion. Without `force` it must beat the champion by the rule
    (`judge_registered`), else PromotionRefused and nothing changes; with `force` it is made champion anyway and
    the decision says it was forced and what the rule said. Already the champion: nothing changes, nothing is
    logged. Returns the decision."""
    cfg = params.promote
    with reg.transaction():
        version = str(reg.registered(ref)["version"])  # must exist; an alias resolves to its version
        seen: dict[str, Any] = {}

        def beats(current: str | None) -> bool:  # an S3 registry may ask again after a lost race
            outcome = (
                PromotionDecision(False, f"{version} is already the champion", None)
                if current == version
                else judge_registered(params, reg, current, version)
            )
            seen.update(previous=current, outcome=outcome)
            return current != version and (outcome.beats or force)

        after = reg.update_champion(version, beats)
        outcome: PromotionDecision = seen["outcome"]
        previous = seen["previous"]
        if previous == version:
            return {"action": "promote", "version": version, "promoted": False, "champion": version,
                    "previous_champion": previous, "reason": outcome.reason}  # fmt: skip
        if after != version:
            raise PromotionRefused(
                f"{version} not promoted: {outcome.reason} (the champion stays {previous}). "
                f"Pass --force to promote it anyway; the decision log records that it was forced"
            )
        rec = reg.registered(version)
        record = {
            "action": "promote",
            "version": version,
            "promoted": True,
            "forced": not outcome.beats,
            "reason": reason,
            "rule": outcome.reason,
            "champion": version,
            "previous_champion": previous,
            "metric": cfg.primary_metric,
            "margin": cfg.margin,
            "challenger_metric": rec.get("metrics", {}).get(cfg.primary_metric),
            "champion_metric": outcome.champion_metric,
            "checkpoint_sha256": rec.get("checkpoint_sha256"),
        }
        reg.log_decision(_stamp(record))
    return record


def champion_history(decisions: list[dict[str, Any]]) -> list[str]:
    """The champions in the order they took the alias, as the decision log tells it, with rolled-back ones
    taken off: a rollback undoes the last change, so rolling back twice goes two champions back."""
    stack: list[str] = []
    for d in decisions:
        new, previous = d.get("champion"), d.get("previous_champion")
        if not d.get("promoted") or not isinstance(new, str) or new == previous:
            continue
        if d.get("action") == "rollback":
            if stack and stack[-1] == previous:
                stack.pop()
            if not stack or stack[-1] != new:
                stack.append(new)
        else:
            stack.append(new)
    return stack


def rollback(reg: RegistryBackend, reason: str) -> dict[str, Any]:
    """Give the champion alias back to the champion before the current one (`champion_history`), and log it.
    Refused (PromotionRefused, nothing changed) when there is no champion, no earlier one, or the current
    champion is not the one the log says holds the alias (set by hand outside the registry commands, or a
    decision lost in a crash): then `promote_version --force` names the champion explicitly."""
    with reg.transaction():
        current = reg.champion()
        history = champion_history(reg.decisions())
        if current is None:
            raise PromotionRefused("no champion to roll back")
        if not history or history[-1] != current:
            last = history[-1] if history else "none"
            raise PromotionRefused(
                f"the champion is {current}, but the decision log's last champion is {last}: the log cannot say "
                f"which champion came before; promote the one you want with --force instead"
            )
        if len(history) < 2:
            raise PromotionRefused(f"{current} is the first champion the decision log records: nothing to roll back to")
        target = history[-2]
        rec = reg.registered(target)  # must still exist

        seen: dict[str, Any] = {}

        def unchanged(now: str | None) -> bool:  # only over the champion this rollback was decided on
            seen["now"] = now
            return now == current

        reg.update_champion(target, unchanged)
        if seen["now"] != current:
            raise PromotionRefused(
                f"the champion changed to {seen['now']} while rolling back from {current}; nothing changed, "
                f"run it again"
            )
        record = {
            "action": "rollback",
            "version": target,
            "promoted": True,
            "reason": reason,
            "champion": target,
            "previous_champion": current,
            "checkpoint_sha256": rec.get("checkpoint_sha256"),
        }
        reg.log_decision(_stamp(record))
    return record
