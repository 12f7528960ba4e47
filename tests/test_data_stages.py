"""generate -> filter -> split: filter rules, unrolling, balancing, determinism, atomic outputs."""

import pyarrow.parquet as pq
import pytest

from editthinker.config import parse_params
from editthinker.images import open_store_for
from editthinker.protocol import parse_thinker_answer
from editthinker.records import read_manifest, read_table
from editthinker.stages import filter as filter_stage
from editthinker.stages import generate, split
from editthinker.stages.split import balance, pick_rl, unroll

SMALL = {"generate": {"num_tasks": 40, "max_turns": 4, "shards": 3}}


def turn(t, overall, satisfied=False, critique=True, nxt=""):
    return {
        "trajectory_id": "tr", "task_id": "t", "source": "world", "task_type": "recolor", "editor": "e", "seed": 0,
        "reference": "{}", "metadata": "{}", "source_image": "s", "original_instruction": "T_s",
        "turn": t, "instruction": f"T{t}", "image": f"I{t}", "semantic": overall, "quality": overall,
        "overall": overall, "has_critique": critique, "critique_raw": "{}", "critique_reason": f"R{t}",
        "critique_satisfied": satisfied, "next_instruction": nxt or ("" if satisfied else f"T{t + 1}"),
        "stop_reason": "",
    }  # fmt: skip


CFG = parse_params({}).filter


def test_filter_keeps_only_if_a_later_turn_matches_the_first():
    assert filter_stage.filter_trajectory([turn(1, 6), turn(2, 5), turn(3, 4, critique=False)], CFG) == []
    kept = filter_stage.filter_trajectory([turn(1, 4), turn(2, 9), turn(3, 7, critique=False)], CFG)
    assert [t["turn"] for t in kept] == [1, 2]  # truncated at the best turn


def test_filter_truncates_at_the_earliest_best_and_clears_a_dead_end_critique():
    kept = filter_stage.filter_trajectory([turn(1, 2), turn(2, 8), turn(3, 8), turn(4, 1, critique=False)], CFG)
    assert [t["turn"] for t in kept] == [1, 2]
    assert not kept[-1]["has_critique"]  # its rewrite led nowhere better
    kept = filter_stage.filter_trajectory([turn(1, 2), turn(2, 10, satisfied=True)], CFG)
    assert kept[-1]["has_critique"] and kept[-1]["critique_satisfied"]  # a stop sample is kept


def test_single_turn_trajectories_need_acceptance_and_a_good_score():
    assert filter_stage.filter_trajectory([turn(1, 10, satisfied=True)], CFG)
    assert not filter_stage.filter_trajectory([turn(1, 3, satisfied=True)], CFG)  # the expert erred
    off = parse_params({"filter": {"keep_accepted_single_turn": False}}).filter
    assert not filter_stage.filter_trajectory([turn(1, 10, satisfied=True)], off)


def test_unroll_gives_step_samples_with_the_method_inputs_and_targets():
    samples = unroll([turn(1, 2), turn(2, 10, satisfied=True)])
    assert [s["step"] for s in samples] == [2, 3]
    first, stop = samples
    assert (first["previous_image"], first["previous_instruction"], first["target_answer"]) == ("I1", "T1", "T2")
    assert (first["source_image"], first["task_type"], first["reference"]) == ("s", "recolor", "{}")
    assert stop["target_answer"] == "T2"  # satisfied: answer the same instruction, which stops the loop
    v = parse_thinker_answer(first["target_text"])
    assert v.format_ok and v.answer == "T2" and v.semantic == 2 and v.reason == "R1"
    assert first["trajectory_score_var"] == pytest.approx(16.0)


def test_balance_caps_groups_deterministically():
    samples = [{"sample_id": f"s{i}", "task_type": "recolor", "target_semantic": 10.0} for i in range(30)]
    samples += [{"sample_id": f"m{i}", "task_type": "move", "target_semantic": 0.0} for i in range(3)]
    samples += [{"sample_id": f"r{i}", "task_type": "remove", "target_semantic": 5.0} for i in range(5)]
    kept = balance(samples, max_ratio=2.0, seed=1)
    assert sum(s["task_type"] == "recolor" for s in kept) == 10 and len(kept) == 18
    assert kept == balance(list(reversed(samples)), max_ratio=2.0, seed=1)
    assert kept != balance(samples, max_ratio=2.0, seed=2)


def test_rl_gets_high_variance_trajectories_up_to_the_cap():
    trajs = [[{"trajectory_id": f"t{i}", "trajectory_score_var": float(i)}] for i in range(10)]
    assert pick_rl(trajs, threshold=6.5, max_fraction=1.0, seed=0) == {"t7", "t8", "t9"}
    assert len(pick_rl(trajs, threshold=0.5, max_fraction=0.3, seed=0)) == 3


def _data_run(tmp_path, name):
    p = parse_params(SMALL)
    root = tmp_path / name
    generate.run(p, root / "traj")
    filter_stage.run(p, root / "traj", root / "filt")
    return split.run(p, root / "filt", root / "sft", root / "rl"), root


def test_small_run_end_to_end_is_byte_identical_twice(tmp_path):
    a, root = _data_run(tmp_path, "a")
    b, _ = _data_run(tmp_path, "b")
    for part in ("sft", "rl"):
        assert a[part]["dataset_sha256"] == b[part]["dataset_sha256"]
    traj = read_manifest(root / "traj")
    # images stored once, in generate's store; every later dataset names that store and copies no bytes
    assert traj["images"] == {**read_manifest(tmp_path / "b" / "traj")["images"]}
    store = open_store_for(root / "traj", root / "traj" / "images")
    for later in ("filt", "sft", "rl"):
        assert read_manifest(root / later)["images"]["dataset_sha256"] == store.dataset_sha256
        assert not (root / later / "images").exists()
    turns = read_table(root / "traj")
    used = set(turns.column("source_image").to_pylist()) | set(turns.column("image").to_pylist())
    stored = [r["sha256"] for r in store.iter_images()]
    assert sorted(used) == stored  # each used image once, nothing else
    assert sum(len(store.bytes_of(h)) for h in used) == traj["images"]["image_bytes"]
    assert store.image(stored[0]).size == (64, 64)
    assert "source_png" not in turns.schema.names and turns.column("source")[0].as_py() == "world"
    assert len(traj["files"]) == 3 and traj["trajectories"] == 40
    lineage = traj["lineage"]
    assert {"params_sha256", "code_version", "inputs", "models"} <= set(lineage)
    assert lineage["models"]["expert"].startswith("synthetic-expert")
    assert read_manifest(root / "filt")["lineage"]["inputs"]["trajectories"] == traj["dataset_sha256"]
    table = read_table(root / "traj").to_pandas()
    assert table.groupby("trajectory_id").turn.max().max() <= 4
    assert set(table.editor) == {"painter", "mover"}
    steps = read_table(root / "sft").to_pandas()
    assert (steps.step >= 2).all() and set(steps.split) == {"sft"}


def test_a_stage_that_dies_midway_leaves_the_previous_output_intact(tmp_path, monkeypatch):
    p = parse_params(SMALL)
    out = tmp_path / "traj"
    first = generate.run(p, out)
    before = {f.relative_to(out): f.read_bytes() for f in out.rglob("*") if f.is_file()}
    calls = {"n": 0}
    real = pq.write_table

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(pq, "write_table", dying)
    with pytest.raises(KeyboardInterrupt):
        generate.run(parse_params({**SMALL, "generate": {**SMALL["generate"], "seed": 99}}), out)
    assert {f.relative_to(out): f.read_bytes() for f in out.rglob("*") if f.is_file()} == before
    assert read_manifest(out)["dataset_sha256"] == first["dataset_sha256"]
    # no temporary leftovers; the finished unit stays for a rerun to resume (tests/test_generate_resume.py)
    assert sorted(x.name for x in tmp_path.iterdir()) == [".traj.units", "traj"]
    kept = [x.relative_to(tmp_path / ".traj.units") for x in (tmp_path / ".traj.units").rglob("*")]
    assert [x for x in kept if x.name.startswith(".")] == []
    assert [x.name for x in kept if x.name.startswith("unit-")] == ["unit-000000000-000000040"]
