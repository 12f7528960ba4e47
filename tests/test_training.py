"""SFT and GRPO stages end to end on a tiny hand-built step-sample dataset (CPU, seconds)."""

from __future__ import annotations

import json
import shutil

import pytest

from editthinker.backends.synthetic import SyntheticEditor, SyntheticJudge, describe_gap
from editthinker.config import Params
from editthinker.images import (
    ImageStoreMismatch,
    image_record,
    open_store_for,
    sha256_bytes,
    store_ref,
    write_image_store,
)
from editthinker.lineage import hash_path, verify_checkpoint
from editthinker.models.vlm import checkpoint_id, kind_of
from editthinker.promotion import Check
from editthinker.protocol import format_thinker_answer
from editthinker.records import STEP_SAMPLE_SCHEMA, read_manifest, write_dataset
from editthinker.roles import EditRequest, ThinkRequest
from editthinker.world.perception import perceive
from editthinker.world.scene import from_png, render_png
from editthinker.world.tasks import canonical_instruction, make_task

STYLES = {"canonical": 0.2, "paraphrase": 0.4, "indirect": 0.2, "relative": 0.2}


IMAGES: dict[str, bytes] = {}  # every image the step samples below refer to, by sha256


def step_samples(seed: int, n: int, split: str) -> list[dict]:
    """Step-2 samples as the pipeline makes them: the first edit, the judge's score, the expert's answer (their
    images by hash, the bytes kept in IMAGES)."""
    judge = SyntheticJudge()
    editors = [SyntheticEditor("painter", "painter", 64), SyntheticEditor("mover", "mover", 64)]
    rows = []
    for i in range(n):
        task, editor = make_task(seed, i, 2, 4, STYLES), editors[i % 2]
        src = render_png(task.source, 64)
        (prev,) = editor.edit([EditRequest(src, task.instruction, i)])
        score = judge.score(src, prev, task.instruction, task.target.to_json())
        seen = perceive(from_png(prev))
        good = score.semantic == 10 and score.quality == 10
        reason = describe_gap(seen.scene, task.target, seen.artifact_fraction)
        answer = task.instruction if good else canonical_instruction(task.op)
        text = format_thinker_answer(reason, score.semantic, score.quality, answer)
        rows.append(
            {
                "sample_id": f"{task.task_id}-2", "trajectory_id": task.task_id, "task_id": task.task_id,
                "source": "world", "task_type": task.op.op, "editor": editor.name, "seed": i, "step": 2,
                "reference": task.target.to_json(), "metadata": task.metadata(),
                "source_image": _keep(src), "previous_image": _keep(prev),
                "original_instruction": task.instruction, "previous_instruction": task.instruction,
                "target_reason": reason, "target_semantic": score.semantic, "target_quality": score.quality,
                "target_answer": answer, "target_text": text,
                "trajectory_score_var": 0.0, "split": split,
            }
        )  # fmt: skip
    return rows


def _keep(png: bytes) -> str:
    IMAGES[sha256_bytes(png)] = png
    return sha256_bytes(png)


PARAMS = Params.model_validate(
    {
        "thinker": {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "max_new_tokens": 64},
        "sft": {"max_steps": 30, "batch_size": 4, "learning_rate": 4e-3},
        "rl": {"max_steps": 3, "batch_size": 4, "num_generations": 2, "select": {"num_tasks": 3, "max_turns": 2}},
    }
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("steps")
    write_steps(root / "sft", step_samples(21, 24, "sft"), rows_per_shard=10)
    write_steps(root / "rl", step_samples(22, 8, "rl"), rows_per_shard=10)
    return root


def write_steps(folder, rows: list[dict], rows_per_shard: int) -> None:  # type: ignore[no-untyped-def]
    """A step-sample dataset with its image store inside it (`<folder>/images`, as an import keeps it)."""
    used = sorted({r[c] for r in rows for c in ("source_image", "previous_image")})

    def store(tmp):  # type: ignore[no-untyped-def]
        return {"images": store_ref(write_image_store(tmp / "images", (image_record(IMAGES[h]) for h in used)))}

    write_dataset(folder, rows, STEP_SAMPLE_SCHEMA, rows_per_shard=rows_per_shard, beside=store)


def test_thinker_dataset_has_prompt_images_and_completion(data):
    from editthinker.records import iter_rows
    from editthinker.training import thinker_dataset

    samples = list(iter_rows(data / "sft"))
    store = open_store_for(data / "sft", data / "sft" / "images")
    ds = thinker_dataset(samples[:3], completion=True, images=store, keep=("target_semantic",))
    row = ds[0]
    assert [p["type"] for p in row["prompt"][0]["content"]] == ["image", "image", "text"]
    assert row["prompt"][0]["content"][2]["text"].endswith(samples[0]["previous_instruction"])
    assert [im.size for im in row["images"]] == [(64, 64), (64, 64)]
    assert row["completion"] == [{"role": "assistant", "content": samples[0]["target_text"]}]
    assert row["target_semantic"] == samples[0]["target_semantic"]
    with pytest.raises(ValueError, match="no step samples"):
        thinker_dataset([], completion=True, images=store)
    other = write_image_store(data / "other-images", [image_record(IMAGES[min(IMAGES)])])
    with pytest.raises(ImageStoreMismatch, match="is not the one the dataset"):
        open_store_for(data / "sft", data / "other-images")
    with pytest.raises(ImageStoreMismatch, match="no image store there"):
        open_store_for(data / "sft", data / "nowhere")
    assert other["rows"] == 1


@pytest.mark.slow
def test_sft_then_rl(data, tmp_path):
    from editthinker.backends.vlm_thinker import VLMThinker
    from editthinker.stages import rl, sft

    sft_dir = tmp_path / "sft"
    m = sft.run(PARAMS, data / "sft", sft_dir)  # the store inside the dataset
    assert m["steps"] == 30 and m["steps_per_second"] > 0 and m["wall_seconds"] > 0
    assert m["train_loss_last"] < 0.6 * m["train_loss_first"]
    assert len(m["loss_curve"]) == 30
    assert json.loads((sft_dir / "metrics.json").read_text()) == json.loads(json.dumps(m))
    lineage = json.loads((sft_dir / "lineage.json").read_text())
    assert lineage["stage"] == "sft"
    store_sha = read_manifest(data / "sft" / "images")["dataset_sha256"]
    assert lineage["inputs"] == {"sft_data": read_manifest(data / "sft")["dataset_sha256"], "images": store_sha}
    assert lineage["params_sha256"] == PARAMS.section_hash("thinker", "sft")
    assert lineage["models"]["thinker"] == m["model_id"] == checkpoint_id(sft_dir)

    thinker = VLMThinker(sft_dir, PARAMS.thinker)
    rows = step_samples(23, 3, "test")
    verdicts = thinker.think([ThinkRequest(IMAGES[r["source_image"]], IMAGES[r["previous_image"]],
                                           r["original_instruction"], r["previous_instruction"])
                              for r in rows])  # fmt: skip
    assert len(verdicts) == 3
    assert all(v.raw.startswith("<think>") for v in verdicts)  # 30 steps teach the opening tag at least

    rl_dir = tmp_path / "rl"
    r = rl.run(PARAMS, data / "rl", sft_dir, rl_dir, data / "rl" / "images")
    assert r["steps"] == 3 and len(r["reward_curve"]) == 3 and r["steps_per_second"] > 0
    assert r["reward_format_mean"] is not None and 0 <= r["reward_format_mean"] <= 1
    lineage = json.loads((rl_dir / "lineage.json").read_text())
    assert lineage["stage"] == "rl"
    assert lineage["inputs"] == {"rl_data": read_manifest(data / "rl")["dataset_sha256"],
                                 "sft_checkpoint": hash_path(sft_dir),
                                 "images": read_manifest(data / "rl" / "images")["dataset_sha256"]}  # fmt: skip
    assert VLMThinker(rl_dir, PARAMS.thinker).model_id == r["model_id"]
    # rl.select validated both models on 3 tasks x 2 editors of the training scenes and output the one kept
    sel = r["selection"]
    assert sel["kept"] in ("rl", "sft") and sel["reasons"] and sel["validation"]["partition"] == "train"
    assert {"sft", "rl"} <= set(sel["validation"]) and 0 <= sel["validation"]["rl"]["success_rate"] <= 1
    assert (r["model_id"] == checkpoint_id(sft_dir)) == (sel["kept"] == "sft")
    assert json.loads((rl_dir / "metrics.json").read_text())["selection"] == sel
    verify_checkpoint(rl_dir)

    # both outcomes, the rule forced: kept, the RL weights and checksums stay; refused, the SFT weights replace them
    inputs = {"rl_data": data / "rl", "sft_checkpoint": sft_dir, "images": data / "rl" / "images"}
    for kept in (True, False):
        out = tmp_path / f"select-{kept}"
        shutil.copytree(rl_dir, out)
        before = checkpoint_id(out)
        verdict = [Check(kept, "forced by the test")]
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(rl, "keep_trained", lambda *a, verdict=verdict: verdict)
            m = rl.select(PARAMS, sft_dir, out, inputs, {"stage": "rl", "model_id": before}, kind_of(sft_dir))
        verify_checkpoint(out)
        assert m["selection"]["kept"] == ("rl" if kept else "sft")
        assert m["selection"]["reasons"] == ["forced by the test"]
        assert checkpoint_id(out) == (before if kept else checkpoint_id(sft_dir)) == m["model_id"]
        assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(m))
        assert json.loads((out / "lineage.json").read_text())["stage"] == "rl"


@pytest.mark.slow
def test_sft_is_deterministic_given_the_seed(data, tmp_path):
    from editthinker.stages import sft

    params = PARAMS.model_copy(update={"sft": PARAMS.sft.model_copy(update={"max_steps": 6})})
    a = sft.run(params, data / "sft", tmp_path / "a")
    b = sft.run(params, data / "sft", tmp_path / "b")
    assert a["loss_curve"] == b["loss_curve"]
    assert a["model_id"] == b["model_id"]
    assert (tmp_path / "a" / "lineage.json").read_bytes() == (tmp_path / "b" / "lineage.json").read_bytes()
    assert hash_path(tmp_path / "a") == hash_path(tmp_path / "b")  # what the rl stage's lineage records
