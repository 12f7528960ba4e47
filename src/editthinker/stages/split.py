"""Stage 3, unroll & split: every critiqued turn becomes a step sample; samples are balanced by task type
and score band; trajectories whose score variance exceeds the threshold go to RL, the rest to SFT. Step samples
refer to images by hash, in the store the filtered trajectories name; both outputs name it too (`images`)."""

from __future__ import annotations

import bisect
import hashlib
import itertools
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path
from statistics import median, pvariance
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from editthinker.config import Params
from editthinker.images import carried_ref
from editthinker.lineage import make_lineage
from editthinker.protocol import format_thinker_answer, format_thinker_score
from editthinker.records import STEP_SAMPLE_SCHEMA, iter_trajectory_tables, read_manifest, write_tables
from editthinker.stages import sections_of
from editthinker.storage import writer_lock

SECTIONS = sections_of("split")
ROWS_PER_SHARD = 4096
SPILL_ROWS = 16 * ROWS_PER_SHARD  # rows per sorted-run bucket of the second pass (memory: one bucket)
SPILL_SAMPLE = 32  # the bucket bounds come from one in this many sample_ids (so they need not all be kept)
# the columns the first pass reads (no images)
SUMMARY_COLUMNS = ["trajectory_id", "turn", "overall", "semantic", "has_critique", "task_type"]
CARRIED = ("trajectory_id", "task_id", "source", "task_type", "editor", "seed")  # copied from the turn as they are


@lru_cache(maxsize=65536)
def score_variance(scores: tuple[float, ...]) -> float:
    """The population variance of a trajectory's overall scores (0 for a single turn); cached: scores repeat."""
    return pvariance(scores) if len(scores) > 1 else 0.0


def unroll(turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Step samples of one (filtered) trajectory: input (I_src, I_{t-1}, T_s, T_{t-1}), target
    (reason, the judge's score of I_{t-1}, refined T_t, or T_{t-1} again when the expert was satisfied)."""
    var = score_variance(tuple(float(t["overall"]) for t in turns))
    out = []
    for t in turns:
        if not t["has_critique"]:
            continue
        answer = t["instruction"] if t["critique_satisfied"] else t["next_instruction"]
        out.append(
            {
                "sample_id": f"{t['trajectory_id']}-s{t['turn'] + 1}",
                **{k: t[k] for k in CARRIED},
                "step": t["turn"] + 1,
                "reference": t["reference"],
                "metadata": t["metadata"],
                "source_image": t["source_image"],
                "previous_image": t["image"],
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


def _ranked(items: list[str], seed: int) -> list[str]:
    """`items` by the sha256 of "seed:item" (raw digests sort as their hex strings do)."""
    prefix = f"{seed}:"
    return sorted(items, key=lambda i: hashlib.sha256((prefix + i).encode()).digest())


def _first_ranked(items: list[str], seed: int, count: int) -> list[str]:
    """The first `count` of `_ranked(items, seed)`, as a set would hold them: all of them, unranked, when
    there are no more than `count`."""
    return items if len(items) <= count else _ranked(items, seed)[:count]


def pick_rl_ids(variances: list[tuple[str, float]], threshold: float, max_fraction: float, seed: int) -> set[str]:
    """Of (trajectory_id, score variance) pairs: the ids whose variance exceeds the threshold, at most
    max_fraction of all of them (a seeded, deterministic choice when there are more candidates)."""
    candidates = [tid for tid, var in variances if var > threshold]
    return set(_first_ranked(candidates, seed, int(max_fraction * len(variances))))


def pick_rl(trajectories: list[list[dict[str, Any]]], threshold: float, max_fraction: float, seed: int) -> set[str]:
    """pick_rl_ids over unrolled trajectories (lists of step samples)."""
    variances = [(t[0]["trajectory_id"], float(t[0]["trajectory_score_var"])) for t in trajectories]
    return pick_rl_ids(variances, threshold, max_fraction, seed)


def score_band(semantic: float) -> str:
    return "low" if semantic < 4 else "mid" if semantic < 8 else "high"


def balanced_ids(samples: Iterable[tuple[str, str, float]], max_ratio: float, seed: int) -> set[str]:
    """Of (sample_id, task_type, target_semantic) triples: the ids kept when every (task type, score band) group
    is capped at max_ratio x the median group size; a group's kept samples are chosen by a seeded hash of their
    id. (The synthetic world's task type is its op.)"""
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for sample_id, task_type, semantic in samples:
        groups[(task_type, score_band(semantic))].append(sample_id)
    if not groups:
        return set()
    cap = max(1, int(max_ratio * median(len(g) for g in groups.values())))
    keep: set[str] = set()
    for g in groups.values():
        keep.update(_first_ranked(g, seed, cap))
    return keep


def balance(samples: list[dict[str, Any]], max_ratio: float, seed: int) -> list[dict[str, Any]]:
    """Cap every (task type, score band) group at max_ratio x the median group size (balanced_ids), sorted by id."""
    keep = balanced_ids(((s["sample_id"], s["task_type"], s["target_semantic"]) for s in samples), max_ratio, seed)
    return sorted((s for s in samples if s["sample_id"] in keep), key=lambda s: s["sample_id"])


def run(params: Params, filtered: Path, sft_dir: Path, rl_dir: Path) -> dict[str, Any]:
    """Every shard read is checked against the manifest; the lineage records the hash of what was verified."""
    with writer_lock(sft_dir), writer_lock(rl_dir):
        return _run(params, filtered, sft_dir, rl_dir)


class _Runs:
    """The trajectories of a table (runs of consecutive rows with the same trajectory_id), vectorised: `order`
    lists the rows run by run, each run's rows by turn (stably, as a sort of its rows by turn); `run` is each
    row's run; `starts` where each run but the first begins (in the rows and in `order` alike); `variance` each
    run's score variance (score_variance of its overall scores in turn order); `steps` the rows with a critique,
    in `order`'s order."""

    def __init__(self, table: pa.Table) -> None:
        n = len(table)
        ids = table.column("trajectory_id")
        new_run = np.zeros(n, dtype=bool)
        if n > 1:
            new_run[1:] = pc.not_equal(ids.slice(1), ids.slice(0, n - 1)).to_numpy()
        self.run = np.cumsum(new_run)
        turn = table.column("turn").to_numpy()
        self.order = np.lexsort((turn, self.run))
        self.starts = np.flatnonzero(new_run)
        overall = table.column("overall").to_pylist()  # a null fails in float(), as unroll's would
        by_turn = [float(overall[i]) for i in self.order.tolist()]
        bounds = [0, *self.starts.tolist(), n]
        self.variance = np.array([score_variance(tuple(by_turn[a:b])) for a, b in itertools.pairwise(bounds)],
                                 dtype=np.float64)  # fmt: skip
        critique = table.column("has_critique").to_numpy().astype(bool)
        self.steps = self.order[critique[self.order]]


BANDS = 3  # score_band's low, mid, high


def _band_codes(semantic: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """score_band of every value as 0 (low), 1 (mid), 2 (high), vectorised (NaN is "high" in both)."""
    if semantic.null_count:
        raise ValueError("split: a step sample has no semantic score (a critiqued turn with a null `semantic`)")
    s = pc.cast(semantic, pa.float64()).to_numpy()
    return np.where(s < 4, 0, np.where(s < 8, 1, 2)).astype(np.int32)


def _rank_keys(ids: list[str], seed: int) -> np.ndarray:
    """The first 8 bytes of sha256("seed:id") of every id as uint64: they order as _ranked's digests do, up to
    ties (which _first_ranked_rows settles with whole digests)."""
    prefix = f"{seed}:".encode()
    joined = b"".join(hashlib.sha256(prefix + i.encode()).digest()[:8] for i in ids)
    return np.frombuffer(joined, dtype=">u8").astype(np.uint64)


def _tables_with_steps(filtered: Path) -> Iterator[tuple[pa.Table, _Runs | None, pa.Table]]:
    """(table, its runs (None when empty), its step-sample rows) of every table of `iter_trajectory_tables` over
    the small columns, in the order `step_samples` gives the samples."""
    for table in iter_trajectory_tables(filtered, SUMMARY_COLUMNS):
        runs = _Runs(table) if len(table) else None
        steps = table.take(pa.array(runs.steps if runs else [], pa.int64()))
        yield table, runs, steps


def _sample_ids(steps: pa.Table) -> pa.Array:
    tids, step = steps.column("trajectory_id"), pc.cast(pc.add(steps.column("turn"), 1), pa.string())
    return pc.binary_join_element_wise(tids, step, "-s").combine_chunks()


class _Summary:
    """Pass 1 over the small columns, in arrays: per step sample (in the order `step_samples` gives them) its
    (task type, score band) group code, trajectory index and rank key (_rank_keys of its id), 14 bytes; per
    trajectory with a step sample its score variance and rank key; about one sample_id in `id_every` (those whose
    rank key is a multiple of it: a random sample) with its position (`sampled_rows`, `sampled_ids`: they place the
    spill's bucket bounds). Ids are read again only where two rank keys tie (`sample_ids_at`, `trajectory_ids_at`)."""

    def __init__(self, filtered: Path, seed: int, id_every: int) -> None:
        self.filtered, self.seed = filtered, seed
        groups, trajectory, keys, trajectory_keys, variance = [], [], [], [], []
        sampled_rows: list[np.ndarray] = []
        sampled_ids: list[pa.Array] = []
        task_codes: dict[str | None, int] = {}
        self.per_table: list[int] = []
        samples = trajectories = 0  # so far
        for table, runs, steps in _tables_with_steps(filtered):
            self.per_table.append(len(steps))
            if runs is None or not len(steps):
                continue
            sids = _sample_ids(steps)
            keys.append(_rank_keys(sids.to_pylist(), seed))
            local = np.flatnonzero(keys[-1] % np.uint64(id_every) == 0)  # a hash sample: no aliasing with the rows
            tasks = pc.dictionary_encode(steps.column("task_type").combine_chunks(), null_encoding="encode")
            codes = np.array([task_codes.setdefault(t, len(task_codes)) for t in tasks.dictionary.to_pylist()],
                             dtype=np.int32)  # fmt: skip
            group = codes[tasks.indices.to_numpy(zero_copy_only=False)] * BANDS + _band_codes(steps.column("semantic"))
            groups.append(group.astype(np.int16))  # checked below: a few dozen task types at most
            with_steps = np.unique(runs.run[runs.steps])  # the runs with a step sample, in order
            first_rows = pa.array(runs.order[np.r_[0, runs.starts][with_steps]], pa.int64())
            trajectory_keys.append(_rank_keys(table.column("trajectory_id").take(first_rows).to_pylist(), seed))
            variance.append(runs.variance[with_steps])
            trajectory.append((trajectories + np.searchsorted(with_steps, runs.run[runs.steps])).astype(np.int32))
            sampled_rows.append(samples + local)
            sampled_ids.append(sids.take(pa.array(local, pa.int64())))
            samples += len(steps)
            trajectories += len(with_steps)

        if len(task_codes) * BANDS > np.iinfo(np.int16).max:
            raise ValueError(f"split: {len(task_codes)} task types: too many to balance (at most 10,922)")

        def joined(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
            return np.concatenate(parts) if parts else np.zeros(0, dtype)

        self.groups, self.trajectory = joined(groups, np.int16), joined(trajectory, np.int32)
        self.keys, self.trajectory_keys = joined(keys, np.uint64), joined(trajectory_keys, np.uint64)
        self.variance, self.sampled_rows = joined(variance, np.float64), joined(sampled_rows, np.int64)
        self.sampled_ids = pa.chunked_array(sampled_ids, pa.string())

    def sample_ids_at(self, rows: np.ndarray) -> list[str]:
        """The sample_ids of step samples `rows` (read again: only for tied rank keys)."""
        return self._ids_at(rows, lambda table, runs, steps: _sample_ids(steps))

    def trajectory_ids_at(self, trajectories: np.ndarray) -> list[str]:
        """The trajectory_ids of trajectories `trajectories` (read again: only for tied rank keys)."""

        def ids(table: pa.Table, runs: _Runs, steps: pa.Table) -> pa.Array:
            with_steps = np.unique(runs.run[runs.steps])
            return table.column("trajectory_id").take(pa.array(runs.order[np.r_[0, runs.starts][with_steps]]))

        return self._ids_at(trajectories, ids)

    def _ids_at(self, positions: np.ndarray, ids_of: Any) -> list[str]:
        found: dict[int, str] = {}
        wanted, start = np.sort(positions), 0
        for table, runs, steps in _tables_with_steps(self.filtered):
            if runs is None or not len(steps):
                continue
            ids = ids_of(table, runs, steps)
            mine = wanted[(wanted >= start) & (wanted < start + len(ids))]
            found.update(zip(mine.tolist(), ids.take(pa.array(mine - start, pa.int64())).to_pylist(), strict=True))
            start += len(ids)
        return [found[p] for p in positions.tolist()]


def _first_ranked_rows(keys: np.ndarray, rows: np.ndarray, seed: int, count: int, ids_at: Any) -> np.ndarray:
    """_first_ranked over the items at `rows` (indices into `keys`, their _rank_keys), as those indices: all of
    them when there are no more than `count`, else the first `count` by sha256("seed:id"): by key, and where two
    keys tie (sha256 makes it vanishingly rare) by whole digests of the ids (`ids_at(rows)` reads them)."""
    if len(rows) <= count:
        return rows
    order = np.argsort(keys[rows], kind="stable")
    ranked = keys[rows][order]
    if (ranked[1:] == ranked[:-1]).any():
        by_id = dict(zip(ids_at(rows), rows.tolist(), strict=True))
        return np.array([by_id[i] for i in _ranked(list(by_id), seed)[:count]], dtype=np.int64)
    return rows[order[:count]]


def _rl_trajectories(summary: _Summary, threshold: float, max_fraction: float) -> np.ndarray:
    """pick_rl_ids over pass 1's trajectories, as a mask of them."""
    candidates = np.flatnonzero(summary.variance > threshold)
    count = int(max_fraction * len(summary.variance))
    chosen = _first_ranked_rows(summary.trajectory_keys, candidates, summary.seed, count, summary.trajectory_ids_at)
    mask = np.zeros(len(summary.variance), dtype=bool)
    mask[chosen] = True
    return mask


def _balanced_rows(summary: _Summary, rows: np.ndarray, max_ratio: float) -> np.ndarray:
    """balanced_ids over the step samples at `rows`, as the kept rows (sorted)."""
    if not len(rows):
        return rows
    groups = summary.groups[rows]
    sizes = np.bincount(groups)
    cap = max(1, int(max_ratio * median(sizes[sizes > 0].tolist())))
    keep = [_first_ranked_rows(summary.keys, rows[groups == g], summary.seed, cap, summary.sample_ids_at)
            for g in np.flatnonzero(sizes)]  # fmt: skip
    return np.sort(np.concatenate(keep))


def step_samples(table: pa.Table) -> pa.Table:
    """unroll, vectorised: the step samples of every (whole, filtered) trajectory of `table`, split left ""."""
    if len(table):
        runs = _Runs(table)
        take, variance = runs.steps, runs.variance[runs.run[runs.steps]]
    else:
        take, variance = np.zeros(0, np.int64), np.zeros(0, np.float64)
    t = table.take(pa.array(take, pa.int64()))
    step = pc.add(t.column("turn"), pa.scalar(1, pa.int32()))
    answer = pc.if_else(pc.fill_null(t.column("critique_satisfied"), False), t.column("instruction"),
                        t.column("next_instruction"))  # fmt: skip
    text = _thinker_texts(t.column("critique_reason"), t.column("semantic"), t.column("quality"), answer)
    columns = {
        "sample_id": pc.binary_join_element_wise(t.column("trajectory_id"), pc.cast(step, pa.string()), "-s"),
        **{k: t.column(k) for k in CARRIED},
        "step": step,
        "reference": t.column("reference"),
        "metadata": t.column("metadata"),
        "source_image": t.column("source_image"),
        "previous_image": t.column("image"),
        "original_instruction": t.column("original_instruction"),
        "previous_instruction": t.column("instruction"),
        "target_reason": t.column("critique_reason"),
        "target_semantic": t.column("semantic"),
        "target_quality": t.column("quality"),
        "target_answer": answer,
        "target_text": text,
        "trajectory_score_var": pa.array(variance, pa.float64()),
        "split": pa.array([""] * len(t), pa.string()),
    }
    return pa.table(columns, schema=STEP_SAMPLE_SCHEMA)


def _thinker_texts(reason: Any, semantic: Any, quality: Any, answer: Any) -> pa.Array:
    """format_thinker_answer of every row, vectorised: the cached `<score>` blocks joined with the reasons and
    answers in Arrow (with a null reason or answer, row by row as format_thinker_answer writes it)."""
    sem, qual = semantic.to_pylist(), quality.to_pylist()
    if reason.null_count or answer.null_count:
        rows = zip(reason.to_pylist(), sem, qual, answer.to_pylist(), strict=True)
        return pa.array([format_thinker_answer(*a) for a in rows], pa.string())
    scores = pa.array([format_thinker_score(s, q) for s, q in zip(sem, qual, strict=True)], pa.string())
    parts = ("<think>", reason, "</think>", scores, "<answer>", answer, "</answer>")
    return pc.binary_join_element_wise(*parts, "")


def _spill_sample() -> int:
    """One in this many sample_ids is kept to place the spill's bucket bounds (1 when buckets are tiny)."""
    return max(1, min(SPILL_SAMPLE, SPILL_ROWS // 16))


class _SortedSpill:
    """Rows of one split, bucketed by sample_id range into Arrow IPC files under `folder` (each bucket holds
    about SPILL_ROWS rows), then read back bucket by bucket, each sorted: the rows in sample_id order with
    memory for one bucket."""

    def __init__(self, folder: Path, name: str, ids: pa.Array) -> None:
        """`ids`: a random sample of the rows' sample_ids, one in _spill_sample() of them (any bounds give the same
        sorted output; the sample only sets the buckets' sizes, about SPILL_ROWS rows each)."""
        self.folder, self.name = folder, name
        step = max(1, SPILL_ROWS // _spill_sample())
        every = pc.sort_indices(ids).to_numpy()[step::step]
        self.bounds = ids.take(pa.array(every, pa.int64())).to_pylist()  # every SPILL_ROWS-th id, about
        self.writers: dict[int, Any] = {}

    def add(self, table: pa.Table) -> None:
        buckets = [bisect.bisect_right(self.bounds, sid) for sid in table.column("sample_id").to_pylist()]
        bucket_array = pa.array(buckets, pa.int32())
        for b in sorted(set(buckets)):
            part = table.filter(pc.equal(bucket_array, b))
            if b not in self.writers:
                self.writers[b] = pa.ipc.new_stream(str(self._path(b)), STEP_SAMPLE_SCHEMA)
            self.writers[b].write_table(part)

    def _path(self, b: int) -> Path:
        return self.folder / f"{self.name}-{b:06d}.arrow"

    def sorted_tables(self) -> Iterator[pa.Table]:
        for w in self.writers.values():
            w.close()
        for b in sorted(self.writers):
            with pa.memory_map(str(self._path(b))) as source:
                table = pa.ipc.open_stream(source).read_all()
            yield table.take(pc.sort_indices(table, sort_keys=[("sample_id", "ascending")]))
            del table
            self._path(b).unlink()
            pa.default_memory_pool().release_unused()  # the allocator keeps freed buckets otherwise


def _run(params: Params, filtered: Path, sft_dir: Path, rl_dir: Path) -> dict[str, Any]:
    """Pass 1 reads the small columns and decides (RL trajectories, balanced samples, output order); pass 2
    streams the step samples into sorted buckets; each output is then written bucket by bucket. Memory:
    pass 1's arrays (14 bytes a step sample, and a sample of the ids), a shard and a bucket of rows, never the
    whole dataset."""
    cfg = params.split
    summary = _Summary(filtered, cfg.seed, _spill_sample())
    per_table = summary.per_table
    rl_mask = _rl_trajectories(summary, cfg.rl_variance_threshold, cfg.rl_max_fraction)
    in_rl = rl_mask[summary.trajectory]  # of every step sample
    names = ("sft", "rl")
    unbalanced = {name: 0 for name in names}
    # where each step sample goes, in pass 1's order (which is pass 2's): 0 nowhere, k the k-th of `names`
    destination = np.zeros(len(summary.groups), dtype=np.int8)
    for code, name in enumerate(names, 1):
        mine = np.flatnonzero(in_rl == (name == "rl"))
        unbalanced[name] = len(mine)
        destination[_balanced_rows(summary, mine, cfg.balance_max_group_ratio)] = code
    # the sampled ids of each output's rows (they place its spill's bucket bounds)
    kept_ids = {name: summary.sampled_ids.filter(pa.array(destination[summary.sampled_rows] == code))
                for code, name in enumerate(names, 1)}  # fmt: skip
    trajectories, rl_trajectories = len(rl_mask), int(rl_mask.sum())
    del summary, in_rl
    models = read_manifest(filtered)["lineage"]["models"]
    lineage = make_lineage("split", params, SECTIONS, {"filtered": filtered}, models)
    result: dict[str, Any] = {"trajectories": trajectories, "rl_trajectories": rl_trajectories}
    with tempfile.TemporaryDirectory(prefix="editthinker-split-") as spill_dir:
        spills = {name: _SortedSpill(Path(spill_dir), name, kept_ids[name]) for name in names}
        del kept_ids
        start = 0
        for k, table in enumerate(iter_trajectory_tables(filtered)):
            samples = step_samples(table)
            if k >= len(per_table) or len(samples) != per_table[k]:  # each pass verified the shards: cannot happen
                raise RuntimeError(f"{filtered}: split's two passes disagree at table {k}")
            where = destination[start : start + len(samples)]
            start += len(samples)
            for code, name in enumerate(names, 1):
                mask = where == code
                if mask.any():
                    part = samples.filter(pa.array(mask, pa.bool_()))
                    split_column = pa.array([name] * len(part), pa.string())
                    spills[name].add(part.set_column(part.schema.get_field_index("split"), "split", split_column))
        if start != len(destination):
            raise RuntimeError(f"{filtered}: split's two passes disagree ({start} then {len(destination)} samples)")
        images = carried_ref(filtered)  # the same store: no bytes copied
        for name, out in (("sft", sft_dir), ("rl", rl_dir)):
            extra = {"lineage": lineage, "unbalanced_rows": unbalanced[name], "images": images}
            result[name] = write_tables(out, spills[name].sorted_tables(), STEP_SAMPLE_SCHEMA, ROWS_PER_SHARD, extra)
    return result
