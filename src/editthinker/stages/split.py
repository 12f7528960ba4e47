"""Stage 3, unroll & split: every critiqued turn becomes a step sample; samples are balanced by task type
and score band; trajectories whose score variance exceeds the threshold go to RL, the rest to SFT."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from itertools import groupby
from pathlib import Path
from statistics import median, pvariance
from typing import Any

from editthinker.config import Params
from editthinker.lineage import make_lineage
from editthinker.protocol import format_thinker_answer
from editthinker.records import STEP_SAMPLE_SCHEMA, iter_rows, read_manifest, write_dataset
from editthinker.stages import sections_of
from editthinker.storage import writer_lock

SECTIONS = sections_of("split")
ROWS_PER_SHARD = 4096


def unroll(turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Step samples of one (filtered) trajectory: input (I_src, I_{t-1}, T_s, T_{t-1}), target
    (reason, the judge's score of I_{t-1}, refined T_t, or T_{t-1} again when the expert was satisfied)."""
    var = pvariance([float(t["overall"]) for t in turns]) if len(turns) > 1 else 0.0
    out = []
    for t in turns:
        if not t["has_critique"]:
            continue
        answer = t["instruction"] if t["critique_satisfied"] else t["next_instruction"]
        out.append(
            {
                "sample_id": f"{t['trajectory_id']}-s{t['turn'] + 1}",
                **{k: t[k] for k in ("trajectory_id", "task_id", "editor", "op", "style", "seed")},
                "step": t["turn"] + 1,
                "source_scene": t["source_scene"],
                "target_scene": t["target_scene"],
                "source_png": t["source_png"],
                "previous_png": t["image_png"],
                "original_instruction": t["original_instruction"],
                "previous_instruction": t["instruction"],
                "target_reason": t["critique_reason"],
                "target_semantic": t["semantic"],
                "target_quality": t["quality"],
                "target_answer": answer,
                "target_text": format_thinker_answer(t["critique_reason"], t["semantic"], t["quality"], answer),
                "trajectory_score_var": var,
                "split": "",
            }
        )
    return out


def _tid(row: dict[str, Any]) -> str:
    return str(row["trajectory_id"])


def _ranked(items: list[str], seed: int) -> list[str]:
    return sorted(items, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())


def pick_rl(trajectories: list[list[dict[str, Any]]], threshold: float, max_fraction: float, seed: int) -> set[str]:
    """Trajectories whose score variance exceeds the threshold, at most max_fraction of all of them
    (a seeded, deterministic choice when there are more candidates)."""
    candidates = [t[0]["trajectory_id"] for t in trajectories if t[0]["trajectory_score_var"] > threshold]
    return set(_ranked(candidates, seed)[: int(max_fraction * len(trajectories))])


def score_band(semantic: float) -> str:
    return "low" if semantic < 4 else "mid" if semantic < 8 else "high"


def balance(samples: list[dict[str, Any]], max_ratio: float, seed: int) -> list[dict[str, Any]]:
    """Cap every (op, score band) group at max_ratio x the median group size; the kept samples of a
    group are chosen by a seeded hash of their id, so the choice is deterministic."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for s in samples:
        groups[(s["op"], score_band(s["target_semantic"]))].append(s)
    if not groups:
        return []
    cap = max(1, int(max_ratio * median(len(g) for g in groups.values())))
    kept: list[dict[str, Any]] = []
    for g in groups.values():
        keep = set(_ranked([s["sample_id"] for s in g], seed)[:cap])
        kept.extend(s for s in g if s["sample_id"] in keep)
    return sorted(kept, key=lambda s: s["sample_id"])


def run(params: Params, filtered: Path, sft_dir: Path, rl_dir: Path) -> dict[str, Any]:
    """Every shard read is checked against the manifest; the lineage records the hash of what was verified."""
    with writer_lock(sft_dir), writer_lock(rl_dir):
        return _run(params, filtered, sft_dir, rl_dir)


def _run(params: Params, filtered: Path, sft_dir: Path, rl_dir: Path) -> dict[str, Any]:
    cfg = params.split
    trajectories = [unroll(sorted(g, key=lambda r: r["turn"])) for _, g in groupby(iter_rows(filtered), key=_tid)]
    trajectories = [t for t in trajectories if t]
    rl_ids = pick_rl(trajectories, cfg.rl_variance_threshold, cfg.rl_max_fraction, cfg.seed)
    parts: dict[str, list[dict[str, Any]]] = {"sft": [], "rl": []}
    for samples in trajectories:
        parts["rl" if samples[0]["trajectory_id"] in rl_ids else "sft"].extend(samples)
    models = read_manifest(filtered)["lineage"]["models"]
    lineage = make_lineage("split", params, SECTIONS, {"filtered": filtered}, models)
    result: dict[str, Any] = {"trajectories": len(trajectories), "rl_trajectories": len(rl_ids)}
    for name, out in (("sft", sft_dir), ("rl", rl_dir)):
        rows = [{**s, "split": name} for s in balance(parts[name], cfg.balance_max_group_ratio, cfg.seed)]
        extra = {"lineage": lineage, "unbalanced_rows": len(parts[name])}
        result[name] = write_dataset(out, rows, STEP_SAMPLE_SCHEMA, ROWS_PER_SHARD, extra)
    return result
