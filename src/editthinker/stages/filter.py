"""Stage 2, filter: keep a trajectory only if a later turn scores at least as well as the first
(max(S_t, t>1) >= S_1), and truncate it at its best-scoring turn. S_t is the judge's overall score.
The kept rows refer to the trajectories' image store; the output's manifest names it (`images`)."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from editthinker.config import FilterConfig, Params
from editthinker.images import carried_ref
from editthinker.lineage import make_lineage
from editthinker.records import TRAJECTORY_SCHEMA, iter_trajectory_tables, read_manifest, write_tables
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


# the columns filter_trajectory decides on: the first pass reads only these
DECISION_COLUMNS = ["trajectory_id", "turn", "overall", "critique_satisfied", "has_critique"]
CLEARED = {"has_critique": False, "critique_raw": "", "critique_reason": "", "next_instruction": ""}


def plan(table: pa.Table, cfg: FilterConfig, counts: dict[str, int]) -> tuple[list[int], list[bool]]:
    """filter_trajectory over every trajectory of `table` (whole trajectories only): the row indices to keep, in
    output order, and for each whether its critique is cleared. Vectorised (numpy over trajectory runs) when every
    score is a number; row by row (`plan_rows`) when a score is null or NaN, as filter_trajectory reads them."""
    overall = table.column("overall")
    if not len(table) or overall.null_count or pc.any(pc.is_nan(overall)).as_py():
        return plan_rows(table, cfg, counts)
    n = len(table)
    ids = table.column("trajectory_id")
    new_run = np.zeros(n, dtype=bool)
    if n > 1:
        new_run[1:] = pc.not_equal(ids.slice(1), ids.slice(0, n - 1)).to_numpy()
    run = np.cumsum(new_run)
    order = np.lexsort((table.column("turn").to_numpy(), run))  # run by run, each run's rows by turn (stable)
    starts = np.r_[0, np.flatnonzero(new_run)]  # where each run begins (in the rows and in `order` alike)
    length = np.diff(np.r_[starts, n])
    position = np.arange(n) - starts[run]  # of each place in `order`, within its run
    score = overall.to_numpy()[order]
    flag = {c: pc.fill_null(table.column(c), False).to_numpy()[order] for c in ("critique_satisfied", "has_critique")}
    first = score[starts]
    later_best = np.maximum.reduceat(np.where(position >= 1, score, -np.inf), starts)
    best = np.minimum.reduceat(np.where(score == np.maximum.reduceat(score, starts)[run], position, n), starts)
    single = length == 1
    single_kept = single & cfg.keep_accepted_single_turn & flag["critique_satisfied"][starts]
    single_kept &= first >= cfg.single_turn_min_overall
    multi_kept = ~single & (later_best >= first)
    kept_run = single_kept | multi_kept
    keep = kept_run[run] & (single[run] | (position <= best[run]))
    clear = multi_kept[run] & (position == best[run]) & flag["has_critique"] & ~flag["critique_satisfied"]
    counts["kept"] += int(kept_run.sum())
    counts["dropped"] += int((~kept_run).sum())
    counts["truncated_turns"] += int((length - best - 1)[multi_kept].sum())
    return order[keep].tolist(), clear[keep].tolist()


def plan_rows(table: pa.Table, cfg: FilterConfig, counts: dict[str, int]) -> tuple[list[int], list[bool]]:
    """`plan`, trajectory by trajectory through filter_trajectory."""
    cols = {c: table.column(c).to_pylist() for c in DECISION_COLUMNS}
    take: list[int] = []
    clear: list[bool] = []
    ids = cols["trajectory_id"]
    for _, group in groupby(range(len(ids)), key=ids.__getitem__):
        index = list(group)
        turns = sorted(({**{c: cols[c][i] for c in DECISION_COLUMNS}, "_row": i} for i in index),
                       key=lambda r: r["turn"])  # fmt: skip
        kept = filter_trajectory(turns, cfg)
        counts["kept" if kept else "dropped"] += 1
        counts["truncated_turns"] += len(turns) - len(kept) if kept else 0
        for k in kept:
            take.append(k["_row"])
            clear.append(bool(cols["has_critique"][k["_row"]]) and not k["has_critique"])
    return take, clear


def apply_plan(table: pa.Table, take: list[int], clear: list[bool]) -> pa.Table:
    out = table.take(pa.array(take, pa.int64()))
    if any(clear):
        mask = pa.array(clear, pa.bool_())
        for name, value in CLEARED.items():
            i = out.schema.get_field_index(name)
            column = pc.if_else(mask, pa.scalar(value, out.schema.field(name).type), out.column(name))
            out = out.set_column(i, out.schema.field(name), column)
    return out


def kept_tables(trajectories: Path, cfg: FilterConfig, counts: dict[str, int]) -> Iterator[pa.Table]:
    """The kept, truncated rows, streamed: one re-cut shard at a time."""
    for table in iter_trajectory_tables(trajectories):
        take, clear = plan(table, cfg, counts)
        yield apply_plan(table, take, clear)


def run(params: Params, trajectories: Path, out_dir: Path) -> dict[str, Any]:
    """Two passes over the verified shards (each read is checked against the manifest; the lineage records the
    hash of what was verified): the first reads only the decision columns and counts the kept rows (the shard
    size depends on it), the second streams the kept rows into the shards. Memory: a shard, not the dataset."""
    with writer_lock(out_dir):
        source = read_manifest(trajectories)
        counts = {"kept": 0, "dropped": 0, "truncated_turns": 0}
        kept_rows = 0
        for table in iter_trajectory_tables(trajectories, DECISION_COLUMNS):
            kept_rows += len(plan(table, params.filter, counts)[0])
        written = {"kept": 0, "dropped": 0, "truncated_turns": 0}
        shards = max(1, len(source["files"]))
        models = source["lineage"]["models"]
        lineage = make_lineage("filter", params, SECTIONS, {"trajectories": trajectories}, models)
        extra = {"lineage": lineage, **counts, "images": carried_ref(trajectories)}  # the same store: no bytes copied
        manifest = write_tables(
            out_dir, kept_tables(trajectories, params.filter, written), TRAJECTORY_SCHEMA,
            max(1, -(-kept_rows // shards)), extra,
        )  # fmt: skip
        if written != counts:  # the shards changed between the passes (each pass verified them: cannot happen)
            raise RuntimeError(f"{trajectories}: filter's two passes disagree ({counts} then {written})")
        return manifest
