"""`editthinker edit`: the loop on one image, written as images, trace.json and index.html."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from editthinker.cli import app
from editthinker.config import ThinkerModelConfig
from editthinker.models.tiny_vlm import MODEL_KIND, build_tiny_thinker
from editthinker.models.vlm import save_thinker
from editthinker.world.scene import render_png
from editthinker.world.tasks import make_task
from tiny_editors import save_tiny


@pytest.fixture
def task_files(tmp_path):
    task = next(t for i in range(50) if (t := make_task(8, i, 2, 4, {"vague": 1.0})).op.op == "recolor")
    (tmp_path / "in.png").write_bytes(render_png(task.source, 64))
    (tmp_path / "target.json").write_text(task.target.to_json())
    (tmp_path / "params.yaml").write_text("editors:\n  - {name: painter, kind: synthetic, profile: painter}\n")
    return tmp_path, task


def _edit(tmp_path, task, *extra: str):
    args = ["edit", "--image", str(tmp_path / "in.png"), "--instruction", task.instruction, "--editor", "painter"]
    args += ["--params", str(tmp_path / "params.yaml"), "--out", str(tmp_path / "out"), *extra]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads((tmp_path / "out" / "trace.json").read_text())


def test_edit_with_expert_writes_turns_trace_and_html(task_files):
    tmp_path, task = task_files
    trace = _edit(
        tmp_path, task, "--thinker", "expert", "--reference", str(tmp_path / "target.json"), "--max-turns", "4"
    )
    out = tmp_path / "out"
    turns = trace["turns"]
    assert 1 <= len(turns) <= 4 and trace["stop_reason"] in {"satisfied", "unchanged", "max_turns"}
    assert [t["turn"] for t in turns] == list(range(1, len(turns) + 1))
    assert turns[0]["instruction"] == task.instruction and trace["instruction"] == task.instruction
    for t in turns:
        assert (out / t["image"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert set(t["score"]) == {"semantic", "quality", "overall"}  # the synthetic judge sees the reference
    assert turns[-1]["critique"] is None or turns[-1]["critique"]["format_ok"]
    if len(turns) > 1:
        assert turns[0]["critique"]["reason"] and turns[1]["instruction"] == turns[0]["critique"]["answer"]
    assert trace["thinker"]["name"] == "synthetic-expert" and trace["editor"]["name"] == "painter"
    html = (out / "index.html").read_text()
    assert 'src="source.png"' in html and all(f'src="turn-{t["turn"]}.png"' in html for t in turns)
    assert (out / "source.png").exists()
    timing = trace["timing"]
    assert timing["loop_s"] >= timing["overhead_s"] >= 0


def test_editor_alone_single_turn_without_judge(task_files):
    tmp_path, task = task_files
    trace = _edit(tmp_path, task, "--thinker", "none", "--max-turns", "5")
    assert len(trace["turns"]) == 1 and trace["turns"][0]["score"] is None and trace["thinker"] is None
    assert "needs the target scene" in trace["judge_note"]
    # a second run replaces the earlier output
    trace2 = _edit(tmp_path, task, "--thinker", "none", "--seed", "3")
    assert trace2["seed"] == 3


def test_edit_with_trained_thinker_checkpoint(task_files):
    tmp_path, task = task_files
    model, processor = build_tiny_thinker(ThinkerModelConfig(hidden_size=64, num_heads=4, max_new_tokens=12), seed=1)
    save_thinker(model, processor, tmp_path / "thinker", MODEL_KIND)
    trace = _edit(tmp_path, task, "--thinker", str(tmp_path / "thinker"), "--max-turns", "2")
    assert trace["thinker"]["name"] == "vlm-thinker" and trace["thinker"]["model_id"].startswith("tiny-qwen2.5-vl@")
    assert trace["turns"][0]["critique"] is not None  # the thinker was asked about turn 1 (random weights: any answer)


def _flat(text: str) -> str:
    return " ".join(text.split())  # rich wraps long lines


def test_edit_errors_are_clear(task_files):
    tmp_path, task = task_files
    base = ["edit", "--image", str(tmp_path / "in.png"), "--instruction", "x", "--out", str(tmp_path / "o")]
    base += ["--params", str(tmp_path / "params.yaml")]
    r = CliRunner().invoke(app, [*base, "--editor", "nope"])
    assert r.exit_code == 1 and "not in params.editors" in _flat(r.output)
    r = CliRunner().invoke(app, [*base, "--editor", "painter", "--thinker", str(tmp_path / "missing")])
    assert r.exit_code == 1 and "neither a checkpoint folder" in _flat(r.output)
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "precious.txt").write_text("x")
    r = CliRunner().invoke(
        app,
        [*base[:-4], "--out", str(tmp_path / "keep"), "--params", str(tmp_path / "params.yaml"), "--editor", "painter"],
    )
    assert r.exit_code == 1 and "not the output of an earlier edit" in _flat(r.output)
    assert (tmp_path / "keep" / "precious.txt").exists()


def test_edit_with_tiny_diffusers_editor(task_files):
    tmp_path, task = task_files
    save_tiny("flux-kontext", tmp_path / "flux")
    (tmp_path / "params.yaml").write_text(
        "editors:\n"
        f"  - {{name: painter, kind: diffusers, pipeline: flux-kontext, model: '{tmp_path / 'flux'}',"
        " num_inference_steps: 2, width: 32, height: 32}\n"
    )
    trace = _edit(
        tmp_path, task, "--thinker", "expert", "--reference", str(tmp_path / "target.json"), "--max-turns", "3"
    )
    # a random editor never satisfies the expert: every turn edits the source again, with a rewritten instruction
    assert len(trace["turns"]) == 3 and trace["stop_reason"] == "max_turns"
    assert trace["editor"]["model_id"] == f"flux-kontext:{tmp_path / 'flux'}"
    with Image.open(tmp_path / "out" / "turn-3.png") as im:
        assert im.size == (32, 32)
