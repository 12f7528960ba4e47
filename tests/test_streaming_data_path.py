"""filter and split stream over verified shards: their outputs are byte-identical to the whole-dataset
implementation they replaced (kept below as the reference), also when trajectories span shards and the sorted
spill has many buckets."""

from itertools import groupby

import pytest

from editthinker.config import parse_params
from editthinker.records import STEP_SAMPLE_SCHEMA, TRAJECTORY_SCHEMA, iter_rows, read_manifest, write_dataset
from editthinker.stages import filter as filter_stage
from editthinker.stages import generate, split
from editthinker.storage import IntegrityError


def reference_filter(params, trajectories, out_dir):
    """The filter stage before streaming: every row in memory."""
    counts = {"kept": 0, "dropped": 0, "truncated_turns": 0}
    rows = []
    for _, group in groupby(iter_rows(trajectories), key=lambda r: r["trajectory_id"]):
        turns = sorted(group, key=lambda r: r["turn"])
        kept = filter_stage.filter_trajectory(turns, params.filter)
        counts["kept" if kept else "dropped"] += 1
        counts["truncated_turns"] += len(turns) - len(kept) if kept else 0
        rows.extend(kept)
    source = read_manifest(trajectories)
    shards = max(1, len(source["files"]))
    return write_dataset(out_dir, rows, TRAJECTORY_SCHEMA, max(1, -(-len(rows) // shards)), counts)


def reference_split(params, filtered, sft_dir, rl_dir):
    """The split stage before streaming: every step sample in memory."""
    cfg = params.split
    groups = groupby(iter_rows(filtered), key=lambda r: r["trajectory_id"])
    trajectories = [t for t in (split.unroll(sorted(g, key=lambda r: r["turn"])) for _, g in groups) if t]
    rl_ids = split.pick_rl(trajectories, cfg.rl_variance_threshold, cfg.rl_max_fraction, cfg.seed)
    parts = {"sft": [], "rl": []}
    for samples in trajectories:
        parts["rl" if samples[0]["trajectory_id"] in rl_ids else "sft"].extend(samples)
    out = {}
    for name, d in (("sft", sft_dir), ("rl", rl_dir)):
        rows = [{**s, "split": name} for s in split.balance(parts[name], cfg.balance_max_group_ratio, cfg.seed)]
        out[name] = write_dataset(d, rows, STEP_SAMPLE_SCHEMA, split.ROWS_PER_SHARD)
    return out


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    params = parse_params({"generate": {"num_tasks": 300, "max_turns": 5, "shards": 4}})
    path = tmp_path_factory.mktemp("gen") / "trajectories"
    generate.run(params, path)
    return params, path


def _same_outputs(params, trajectories, tmp_path):
    ref_filtered = reference_filter(params, trajectories, tmp_path / "ref_filtered")
    new_filtered = filter_stage.run(params, trajectories, tmp_path / "filtered")
    assert new_filtered["dataset_sha256"] == ref_filtered["dataset_sha256"]
    assert new_filtered["files"] == ref_filtered["files"]
    assert {k: new_filtered[k] for k in ("kept", "dropped", "truncated_turns")} == {
        k: ref_filtered[k] for k in ("kept", "dropped", "truncated_turns")
    }
    ref = reference_split(params, tmp_path / "filtered", tmp_path / "ref_sft", tmp_path / "ref_rl")
    new = split.run(params, tmp_path / "filtered", tmp_path / "sft", tmp_path / "rl")
    for name in ("sft", "rl"):
        assert new[name]["rows"] > 0
        assert new[name]["dataset_sha256"] == ref[name]["dataset_sha256"], name
    return new


def test_streamed_filter_and_split_give_the_same_bytes_as_the_in_memory_stages(generated, tmp_path):
    params, trajectories = generated
    new = _same_outputs(params, trajectories, tmp_path)
    assert new["trajectories"] > new["rl_trajectories"] > 0


def test_same_bytes_when_trajectories_span_shards_come_unsorted_and_the_spill_has_many_buckets(
    generated, tmp_path, monkeypatch
):
    params, trajectories = generated
    groups = [list(g) for _, g in groupby(iter_rows(trajectories), key=lambda r: r["trajectory_id"])]
    # trajectories out of id order and their turns backwards: the outputs must sort them
    rows = [r for g in reversed(groups) for r in reversed(g)]
    odd = tmp_path / "odd"  # 7-row shards: most trajectories straddle a shard boundary
    manifest = read_manifest(trajectories)  # the same rows refer to the same image store
    write_dataset(odd, rows, TRAJECTORY_SCHEMA, 7, {"lineage": manifest["lineage"], "images": manifest["images"]})
    assert len(read_manifest(odd)["files"]) > 50
    monkeypatch.setattr(split, "SPILL_ROWS", 9)  # tens of sorted buckets per output
    monkeypatch.setattr(split, "ROWS_PER_SHARD", 5)
    new = _same_outputs(params, odd, tmp_path)
    assert len(new["sft"]["files"]) > 10


def test_a_tampered_shard_stops_the_streamed_stages(generated, tmp_path):
    params, trajectories = generated
    filter_stage.run(params, trajectories, tmp_path / "filtered")
    shard = sorted((tmp_path / "filtered").glob("part-*.parquet"))[-1]
    shard.write_bytes(shard.read_bytes()[:-9] + b"tampered!")
    with pytest.raises(IntegrityError, match=shard.name):
        split.run(params, tmp_path / "filtered", tmp_path / "sft", tmp_path / "rl")
    assert not (tmp_path / "sft").exists()


def test_vectorised_filter_plan_matches_filter_trajectory_row_by_row():
    """Random trajectories (1-5 turns, shuffled, tied scores, null flags): the numpy plan keeps, clears and counts
    exactly what filter_trajectory does, for either single-turn rule."""
    import random

    import pyarrow as pa

    rng = random.Random(5)
    rows = []
    for t in range(400):
        turns = list(range(1, rng.randint(1, 5) + 1))
        rng.shuffle(turns)
        for turn in turns:
            rows.append(
                {
                    "trajectory_id": f"t{t:04d}",
                    "turn": turn,
                    "overall": float(rng.choice([0, 2.5, 5, 7.5, 8, 9, 10])),
                    "critique_satisfied": rng.choice([True, False, None]),
                    "has_critique": rng.choice([True, False, None]),
                }
            )
    table = pa.Table.from_pylist(rows)
    for keep_single in (True, False):
        cfg = parse_params({"filter": {"keep_accepted_single_turn": keep_single}}).filter
        fast, slow = {"kept": 0, "dropped": 0, "truncated_turns": 0}, {"kept": 0, "dropped": 0, "truncated_turns": 0}
        assert filter_stage.plan(table, cfg, fast) == filter_stage.plan_rows(table, cfg, slow)
        assert fast == slow and slow["kept"] and slow["dropped"] and slow["truncated_turns"]


def _random_summary(rng, n_trajectories, seed):
    """A pass-1 summary built by hand: random trajectories of 1-4 step samples, task types (one null), semantic
    scores on the bands' edges and NaN, variances around the threshold; ids read again by list lookups."""
    import numpy as np
    import pyarrow as pa

    sample_ids, groups, trajectory, triples = [], [], [], []
    tasks = ["add", "remove", "recolor", None]
    for t in range(n_trajectories):
        for step in range(1, rng.randint(1, 4) + 1):
            task, semantic = rng.choice(tasks), rng.choice([0.0, 3.9, 4.0, 7.9, 8.0, 10.0, float("nan")])
            sid = f"traj-{t:05d}-s{step}"
            sample_ids.append(sid)
            triples.append((sid, task, semantic))
            band = split._band_codes(pa.array([semantic], pa.float64()))[0]
            groups.append(tasks.index(task) * split.BANDS + band)
            trajectory.append(t)
    trajectory_ids = [f"traj-{t:05d}" for t in range(n_trajectories)]
    summary = split._Summary.__new__(split._Summary)
    summary.seed = seed
    summary.groups, summary.trajectory = np.array(groups, np.int32), np.array(trajectory, np.int64)
    summary.keys = split._rank_keys(sample_ids, seed)
    summary.trajectory_keys = split._rank_keys(trajectory_ids, seed)
    summary.variance = np.array([rng.choice([0.0, 0.5, 1.0, 6.0, 9.0]) for _ in range(n_trajectories)])
    summary.sample_ids_at = lambda rows: [sample_ids[r] for r in rows.tolist()]
    summary.trajectory_ids_at = lambda rows: [trajectory_ids[r] for r in rows.tolist()]
    return summary, triples, sample_ids, trajectory_ids


@pytest.mark.parametrize("seed", [0, 7])
@pytest.mark.parametrize("tie_keys", [False, True])
def test_array_choices_of_pass_one_match_the_reference_set_functions(seed, tie_keys):
    """The split's pass 1 decides with arrays (8-byte rank keys, group codes): the RL trajectories and the balanced
    samples are the ones pick_rl_ids and balanced_ids choose, over groups that are capped and not; also when
    rank keys tie (forced here by cutting them to 4 bits), which whole digests of the ids settle."""
    import random

    import numpy as np

    rng = random.Random(seed)
    summary, triples, sample_ids, trajectory_ids = _random_summary(rng, 3000, seed)
    if tie_keys:
        summary.keys, summary.trajectory_keys = summary.keys >> np.uint64(60), summary.trajectory_keys >> np.uint64(60)
    for threshold, fraction in ((0.7, 0.2), (0.7, 1.0), (5.0, 0.05)):
        mask = split._rl_trajectories(summary, threshold, fraction)
        want = split.pick_rl_ids(list(zip(trajectory_ids, summary.variance.tolist(), strict=True)), threshold,
                                 fraction, seed)  # fmt: skip
        assert {trajectory_ids[k] for k in np.flatnonzero(mask)} == want and want
    for ratio in (0.5, 1.0, 3.0):
        rows = np.flatnonzero(summary.trajectory % 3 != 0)  # a subset, as one split's samples are
        kept = split._balanced_rows(summary, rows, ratio)
        want = split.balanced_ids([triples[k] for k in rows.tolist()], ratio, seed)
        assert {sample_ids[k] for k in kept.tolist()} == want
        assert ratio > 1 or len(want) < len(rows)  # a capped case is among them


def test_ids_read_again_for_tied_keys_are_the_ids_of_those_rows(generated, tmp_path):
    """Where rank keys tie, pass 1 reads ids again from the data: the ids at any rows are the step samples' ids."""
    import numpy as np

    params, trajectories = generated
    filter_stage.run(params, trajectories, tmp_path / "filtered")
    summary = split._Summary(tmp_path / "filtered", 0, 7)
    steps = split.step_samples(next(iter(split.iter_trajectory_tables(tmp_path / "filtered"))))
    all_ids = [sid for t in split.iter_trajectory_tables(tmp_path / "filtered")
               for sid in split.step_samples(t).column("sample_id").to_pylist()]  # fmt: skip
    rows = np.array([len(all_ids) - 1, 0, 5, len(steps) + 3])
    assert summary.sample_ids_at(rows) == [all_ids[r] for r in rows.tolist()]
    sampled = summary.sampled_ids.to_pylist()
    assert sampled == [all_ids[r] for r in summary.sampled_rows.tolist()]
    assert len(all_ids) / 7 * 0.7 < len(sampled) < len(all_ids) / 7 * 1.3  # about one in 7
    traj_ids = list(dict.fromkeys(sid.rsplit("-s", 1)[0] for sid in all_ids))
    assert summary.trajectory_ids_at(np.array([2, 0, len(traj_ids) - 1])) == [traj_ids[2], traj_ids[0], traj_ids[-1]]
