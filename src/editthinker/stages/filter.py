"""Stage 2, filter: keep a trajectory only if a later turn scores at least as well as the first
(max(S_t, t>1) >= S_1), and truncate it at its best-scoring turn. S_t is the judge's overall score."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import groupby
from pathlib import Path
from typing import Any

from editthinker.config import FilterConfig, Params
from editthinker.lineage import make_lineage
from editthinker.records import TRAJECTORY_SCHEMA, iter_rows, read_manifest, write_dataset
from editthinker.stages import sections_of
from editthinker.storage import writer_lock

SECTIONS = sections_of("filter")


def filter_trajectory(turns: list[dict[str, Any]], cfg: FilterConfig) -> list[dict[str, Any]]:
    """The kept, truncated turns of one trajectory (sorted by turn); [] when it is dropped."""
    scores = [float(t["overall"]) for t in turns]
    if len(turns) == 1:
        accepted = turns[0]["critique_satisfied"] and scores[0] >= cfg.single_turn_min_overall
        return turns if cfg.keep_accepted_single_turn and accepted else []
    if max(scores[1:]) < scores[0]:
        return []
    best = scores.index(max(scores))  # the earliest best turn
    kept = [dict(t) for t in turns[: best + 1]]
    last = kept[-1]
    if last["has_critique"] and not last["critique_satisfied"]:
        # the expert asked for more, but every later edit was worse: that critique taught nothing
        last.update(has_critique=False, critique_raw="", critique_reason="", next_instruction="")
    return kept


def kept_rows(trajectories: Path, cfg: FilterConfig, counts: dict[str, int]) -> Iterator[dict[str, Any]]:
    for _, group in groupby(iter_rows(trajectories), key=lambda r: r["trajectory_id"]):
        turns = sorted(group, key=lambda r: r["turn"])
        kept = filter_trajectory(turns, cfg)
        counts["kept" if kept else "dropped"] += 1
        counts["truncated_turns"] += len(turns) - len(kept) if kept else 0
        yield from kept


def run(params: Params, trajectories: Path, out_dir: Path) -> dict[str, Any]:
    """Every shard read is checked against the manifest; the lineage records the hash of what was verified."""
    with writer_lock(out_dir):
        source = read_manifest(trajectories)
        counts = {"kept": 0, "dropped": 0, "truncated_turns": 0}
        rows = list(kept_rows(trajectories, params.filter, counts))
        shards = max(1, len(source["files"]))
        models = source["lineage"]["models"]
        lineage = make_lineage("filter", params, SECTIONS, {"trajectories": trajectories}, models)
        return write_dataset(
            out_dir, rows, TRAJECTORY_SCHEMA, max(1, -(-len(rows) // shards)), {"lineage": lineage, **counts}
        )
