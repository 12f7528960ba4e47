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
