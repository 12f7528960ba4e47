"""The stand-in roles (tests and benchmarks only): declared in params, built by the factory, deterministic, and a
generate run over real prepared tasks with them in process asks the same rewrites as the stub API expert; write_dataset
batching rows never changes the bytes."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from editthinker import prepare
from editthinker.backends.factory import build_expert, build_judge
from editthinker.backends.stand_in import StandInEditor, StandInExpert, StandInJudge
from editthinker.config import ConfigError, parse_params
from editthinker.records import ROWS_PER_TABLE, TRAJECTORY_SCHEMA, iter_rows, read_manifest, write_dataset
from editthinker.roles import EditRequest, ScoreRequest, ThinkRequest
from editthinker.stages import generate


def _photo(seed: int, size: int = 64) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def test_stand_in_expert_and_judge_are_declared_in_params_and_built_by_the_factory() -> None:
    params = parse_params({"expert": {"kind": "stand-in"}, "judge": {"kind": "stand-in"}})
    assert isinstance(build_expert(params.expert, 0), StandInExpert)
    assert isinstance(build_judge(params.judge), StandInJudge)
    with pytest.raises(ConfigError, match="only apply to kind: openai"):
        parse_params({"expert": {"kind": "stand-in", "model": "gpt-4.1"}})
    with pytest.raises(ConfigError):
        parse_params({"judge": {"kind": "stand-inn"}})


def test_the_stand_in_editor_lookup_table_is_the_float_transform_pixel_by_pixel() -> None:
    source = _photo(3)
    pixels = np.asarray(Image.open(io.BytesIO(source)).convert("RGB"), dtype=np.float32)
    for instruction, seed in (("make it warmer", 1), ("add a hat", 7)):
        gain, offset = StandInEditor.transform(instruction, seed)
        expected = np.clip(pixels * gain + offset, 0, 255).astype(np.uint8)
        edited = StandInEditor("x").edit([EditRequest(source, instruction, seed)])[0]
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(edited))), expected)


def test_stand_in_expert_asks_one_rewrite_and_the_judge_scores_by_content() -> None:
    src, edit = _photo(1), _photo(2)
    first, later = StandInExpert().think(
        [ThinkRequest(src, edit, "add a hat", "add a hat"), ThinkRequest(src, edit, "add a hat", "add a red hat")]
    )
    assert first.format_ok and not first.satisfied and first.answer == "add a hat, exactly as asked"
    assert later.format_ok and later.satisfied
    judge = StandInJudge()
    scores = judge.score_many([ScoreRequest(src, edit, "add a hat"), ScoreRequest(src, _photo(4), "add a hat")] * 2)
    assert scores[:2] == scores[2:]  # deterministic
    assert all(0 <= s.semantic <= 10 and 0 <= s.quality <= 10 for s in scores)
    many = {judge.score(src, _photo(k), "add a hat", None) for k in range(5, 25)}
    assert len(many) > 1  # the scores follow the images


def test_generate_over_prepared_real_tasks_with_every_stand_in_role(tmp_path: Path) -> None:
    (tmp_path / "src" / "images").mkdir(parents=True)
    lines = []
    for i in range(5):
        (tmp_path / "src" / "images" / f"p{i}.png").write_bytes(_photo(i))
        lines.append(json.dumps({"image": f"images/p{i}.png", "instruction": f"make photo {i} warmer"}))
    (tmp_path / "src" / "rows.jsonl").write_text("\n".join(lines) + "\n")
    params = parse_params(
        {
            "sources": [{"name": "mine", "kind": "jsonl", "path": str(tmp_path / "src" / "rows.jsonl")}],
            "editors": [{"name": "shift", "kind": "stand-in"}],
            "expert": {"kind": "stand-in"},
            "judge": {"kind": "stand-in"},
            "generate": {"num_tasks": 5, "max_turns": 3, "shards": 1, "unit_tasks": 2},
        }
    )
    prepare.run(params, tmp_path / "prepared")
    first = generate.run(params, tmp_path / "a", tasks=tmp_path / "prepared")
    again = generate.run(params, tmp_path / "b", tasks=tmp_path / "prepared")
    assert first["dataset_sha256"] == again["dataset_sha256"]
    rows = list(iter_rows(tmp_path / "a"))
    by_traj: dict[str, list[dict]] = {}
    for r in rows:
        by_traj.setdefault(r["trajectory_id"], []).append(r)
    assert len(by_traj) == 5
    for turns in by_traj.values():  # one rewrite, then satisfied: two edits, the second of the rewrite
        assert [t["turn"] for t in turns] == [1, 2]
        assert turns[1]["instruction"] == f"{turns[0]['original_instruction']}, exactly as asked"
        assert turns[-1]["stop_reason"] == "satisfied" and all(t["reference"] is None for t in turns)
    assert read_manifest(tmp_path / "a")["lineage"]["models"]["expert"] == StandInExpert.model_id


def test_write_dataset_gives_the_same_bytes_whatever_the_batching(tmp_path: Path) -> None:
    n = 2 * ROWS_PER_TABLE + 17
    rows = [{"trajectory_id": f"t{i:06d}", "turn": i % 3, "instruction": "x" * (i % 50), "seed": i} for i in range(n)]
    streamed = write_dataset(tmp_path / "streamed", iter(rows), TRAJECTORY_SCHEMA, n)
    assert len(streamed["files"]) == 1
    whole = pa.Table.from_pylist(rows, schema=TRAJECTORY_SCHEMA)
    from editthinker.records import write_tables

    reference = write_tables(tmp_path / "whole", [whole], TRAJECTORY_SCHEMA, n)
    assert streamed["dataset_sha256"] == reference["dataset_sha256"]
    name = next(iter(streamed["files"]))
    assert (tmp_path / "streamed" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()
