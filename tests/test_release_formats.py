"""Step samples to and from the release's LLaMA-Factory (SFT) and EasyR1 (RL) formats."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from editthinker import release_formats as rf
from editthinker.cli import app
from editthinker.config import parse_params
from editthinker.images import ImageStore, carried_ref
from editthinker.protocol import IMAGE_TOKEN, parse_thinker_answer
from editthinker.records import STEP_SAMPLE_SCHEMA, iter_rows, read_manifest, write_dataset
from editthinker.stages import filter as filter_stage
from editthinker.stages import generate, split
from editthinker.training import thinker_dataset

SMALL = {"generate": {"num_tasks": 24, "max_turns": 4, "shards": 1}}
# what each format holds of a step sample (images compared separately)
HELD = {
    "llamafactory": ("original_instruction", "previous_instruction", "target_reason", "target_semantic",
                     "target_quality", "target_answer", "target_text"),
    "easyr1": ("original_instruction", "previous_instruction", "target_semantic", "target_quality"),
}  # fmt: skip


@pytest.fixture(scope="module")
def steps(tmp_path_factory) -> Path:
    """Real step samples from a small data run (generate -> filter -> split), SFT and RL together."""
    root = tmp_path_factory.mktemp("data")
    p = parse_params(SMALL)
    generate.run(p, root / "traj")
    filter_stage.run(p, root / "traj", root / "filt")
    split.run(p, root / "filt", root / "sft", root / "rl")
    rows = list(iter_rows(root / "sft")) + list(iter_rows(root / "rl"))
    assert len(rows) >= 10
    # one dataset of both; its images stay in generate's store, which it names
    write_dataset(root / "steps", rows, STEP_SAMPLE_SCHEMA, 64, {"images": carried_ref(root / "sft")})
    return root / "steps"


def _store(steps: Path) -> Path:
    """The image store the step samples refer to (generate's, inside the trajectories)."""
    return steps.parent / "traj" / "images"


def _rows(path: Path) -> list[dict]:
    return list(iter_rows(path))


@pytest.mark.parametrize("fmt", rf.FORMATS)
def test_export_then_import_keeps_everything_the_format_holds(steps, tmp_path, fmt):
    original = _rows(steps)
    report = rf.export_steps(steps, tmp_path / "out", fmt, images=_store(steps))
    assert report.written == len(original) and not report.skipped
    back_report = rf.import_steps(tmp_path / "out", tmp_path / "back", fmt)
    assert back_report.written == len(original) and not back_report.skipped
    back = _rows(tmp_path / "back")
    assert len(back) == len(original)
    for a, b in zip(original, back, strict=True):
        assert {k: a[k] for k in HELD[fmt]} == {k: b[k] for k in HELD[fmt]}
        # PNG bytes, byte for byte (the import keeps its images in a store of its own)
        assert rf.step_images(a, ImageStore(_store(steps))) == rf.step_images(
            b, ImageStore(tmp_path / "back" / "images")
        )
        assert b["split"] == ("sft" if fmt == "llamafactory" else "rl")
    # the fields the format does not hold are the documented defaults, and the report lists them
    held = set(HELD[fmt]) | {"source_image", "previous_image", "sample_id", "trajectory_id", "task_id"}
    for name in set(STEP_SAMPLE_SCHEMA.names) - held:
        assert name in back_report.defaults
        assert back[0][name] == back_report.defaults[name], name


def test_llamafactory_export_follows_the_loader_rules(steps, tmp_path):
    rf.export_steps(steps, tmp_path / "out", "llamafactory", images=_store(steps))
    out = tmp_path / "out"
    records = json.loads((out / rf.SFT_FILE).read_text())
    assert isinstance(records, list) and records
    for r in records:
        assert set(r) == {"messages", "images"}
        messages, images = r["messages"], r["images"]
        assert len(messages) % 2 == 0
        assert [m["role"] for m in messages] == ["user", "assistant"] * (len(messages) // 2)
        assert sum(m["content"].count(IMAGE_TOKEN) for m in messages) == len(images) == 2
        assert messages[0]["content"].startswith(IMAGE_TOKEN * 2)
        assert all((out / p).is_file() and not Path(p).is_absolute() for p in images)
        answer = messages[1]["content"]
        assert answer.index("<think>") < answer.index("<score>") < answer.index("<answer>")
        assert parse_thinker_answer(answer).format_ok
    info = json.loads((out / rf.DATASET_INFO).read_text())
    entry = info[rf.DATASET_NAME]
    assert entry["file_name"] == rf.SFT_FILE and entry["formatting"] == "sharegpt"
    assert entry["columns"] == {"messages": "messages", "images": "images"}
    assert entry["tags"] == {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                             "assistant_tag": "assistant"}  # fmt: skip
    # a source image shared by the steps of one trajectory is written once
    assert len(list((out / rf.IMAGES_DIR).iterdir())) < 2 * len(records)


def test_exported_files_load_with_datasets_json_in_one_schema(steps, tmp_path):
    from datasets import load_dataset

    rf.export_steps(steps, tmp_path / "rl", "easyr1", images=_store(steps))
    rf.export_steps(steps, tmp_path / "sft", "llamafactory", images=_store(steps))
    lines = (tmp_path / "rl" / rf.RL_FILE).read_text().splitlines()
    assert {tuple(sorted(json.loads(x))) for x in lines} == {tuple(sorted(rf.RL_KEYS))}
    cache = str(tmp_path / "hf-cache")
    rl = load_dataset("json", data_files=str(tmp_path / "rl" / rf.RL_FILE), split="train", cache_dir=cache)
    assert rl.num_rows == len(lines)
    assert set(rl.features) == set(rf.RL_KEYS)
    assert set(rl.features["evaluation"]) == {"semantics", "quality"}
    assert all(0 <= e["semantics"] <= 10 for e in rl["evaluation"])
    assert all((tmp_path / "rl" / p).is_file() for p in rl["edited_image_path"])
    sft = load_dataset("json", data_files=str(tmp_path / "sft" / rf.SFT_FILE), split="train", cache_dir=cache)
    assert sft.num_rows == len(json.loads((tmp_path / "sft" / rf.SFT_FILE).read_text()))
    assert set(sft.features) == {"messages", "images"}


def _bad_rows(steps: Path) -> list[dict]:
    rows = _rows(steps)[:4]
    rows[1] = {**rows[1], "original_instruction": f"put {IMAGE_TOKEN} here"}  # 3 image tokens, 2 images
    rows[2] = {**rows[2], "target_answer": "  "}  # an empty answer: would not import
    rows[3] = {**rows[3], "target_semantic": math.nan}  # not a number in JSON
    return rows


@pytest.mark.parametrize(("fmt", "bad"), [("llamafactory", {1, 2, 3}), ("easyr1", {3})])
def test_a_bad_record_is_not_written_and_is_reported(steps, tmp_path, fmt, bad):
    rows = _bad_rows(steps)
    write_dataset(tmp_path / "bad", rows, STEP_SAMPLE_SCHEMA, 64, {"images": carried_ref(steps)})
    report = rf.export_steps(tmp_path / "bad", tmp_path / "out", fmt, images=_store(steps))
    assert {p.record for p in report.skipped} == {rows[i]["sample_id"] for i in bad}
    assert report.written == len(rows) - len(bad)
    assert all(p.reasons for p in report.skipped)
    on_disk = json.loads((tmp_path / "out" / rf.REPORT_FILE).read_text())
    assert {p["record"] for p in on_disk["skipped"]} == {rows[i]["sample_id"] for i in bad}
    back = _rows(Path(rf.import_steps(tmp_path / "out", tmp_path / "back", fmt).files[0]))
    assert [b["original_instruction"] for b in back] == [
        r["original_instruction"] for i, r in enumerate(rows) if i not in bad
    ]
    if fmt == "llamafactory":
        reasons = {p.record: " ".join(p.reasons) for p in report.skipped}
        assert "3 <image> tokens but 2 images" in reasons[rows[1]["sample_id"]]


def test_sharegpt_rules():
    good = {
        "messages": [{"role": "user", "content": "<image><image>hi"}, {"role": "assistant", "content": "x"}],
        "images": ["a.png", "b.png"],
    }
    assert rf.sharegpt_problems(good) == []
    assert any("odd" in p for p in rf.sharegpt_problems({**good, "messages": good["messages"][:1]}))
    swapped = {**good, "messages": list(reversed(good["messages"]))}
    assert any("alternate" in p for p in rf.sharegpt_problems(swapped))
    assert any("1 images" in p for p in rf.sharegpt_problems({**good, "images": ["a.png"]}))


def _png(colour: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(buf, format="PNG")
    return buf.getvalue()


def test_import_reports_broken_release_records_and_reads_jpeg(tmp_path):
    """Hand-written release files: bad lines are skipped with a reason; a JPEG is stored as PNG."""
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(_png("red"))
    Image.new("RGB", (64, 64), "blue").save(tmp_path / "img" / "b.jpg")
    good = {"origin_prompt": "make it blue", "rewritten_prompt": "paint the square blue",
            "origin_image_path": "a.png", "edited_image_path": "b.jpg",
            "evaluation": {"semantics": 4, "quality": 9.5}}  # fmt: skip
    lines = [
        json.dumps(good),
        "{not json",
        json.dumps({**good, "evaluation": {"semantic": 4, "quality": 9}}),  # singular key
        json.dumps({**good, "edited_image_path": "missing.png"}),
        json.dumps({k: v for k, v in good.items() if k != "rewritten_prompt"}),
    ]
    (tmp_path / "rl.jsonl").write_text("\n".join(lines) + "\n")
    report = rf.import_steps(tmp_path / "rl.jsonl", tmp_path / "ds", "easyr1", image_dir=tmp_path / "img")
    assert report.written == 1
    assert [p.record for p in report.skipped] == ["1", "2", "3", "4"]
    why = {p.record: " ".join(p.reasons) for p in report.skipped}
    assert "not JSON" in why["1"] and "evaluation.semantics" in why["2"] and "image" in why["3"]
    assert "rewritten_prompt is missing" in why["4"]
    (row,) = _rows(tmp_path / "ds")
    assert (row["target_semantic"], row["target_quality"]) == (4.0, 9.5)
    previous = ImageStore(tmp_path / "ds" / "images").bytes_of(row["previous_image"])
    assert previous.startswith(b"\x89PNG")
    assert Image.open(io.BytesIO(previous)).getpixel((5, 5))[2] > 200
    manifest = read_manifest(tmp_path / "ds")
    assert manifest["rows"] == 1 and manifest["lineage"]["stage"] == "import-easyr1"
    assert len(manifest["import"]["skipped"]) == 4


def test_import_llamafactory_reads_a_release_style_answer_leniently(tmp_path):
    template = "<image><image>\nFix it. Original: '{original_instruction}'. Used: '{rewritten_prompt}'."
    (tmp_path / "a.png").write_bytes(_png("red"))
    (tmp_path / "b.png").write_bytes(_png("green"))
    user = "<image><image>\nFix it. Original: 'make it blue'. Used: 'paint the square blue'."
    answer = (
        'Sure.\n< think >too green</think >\n<score>{"semantic": 2, "quality": 9}</score>\n'
        "<answer>dye the square blue</answer> done"
    )

    def record(prompt: str) -> dict:
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        return {"messages": messages, "images": ["a.png", "b.png"]}

    records = [record(user), record("<image><image>other text")]
    (tmp_path / "sft.json").write_text(json.dumps(records))
    report = rf.import_steps(tmp_path / "sft.json", tmp_path / "ds", "llamafactory", template=template)
    assert report.written == 1 and report.lenient == 1
    assert "template" in " ".join(report.skipped[0].reasons)
    (row,) = _rows(tmp_path / "ds")
    assert (row["original_instruction"], row["previous_instruction"]) == ("make it blue", "paint the square blue")
    assert (row["target_reason"], row["target_answer"], row["target_semantic"]) == (
        "too green",
        "dye the square blue",
        2.0,
    )
    assert parse_thinker_answer(row["target_text"]).format_ok  # stored in the strict form training uses


def test_imported_samples_feed_the_training_stages(steps, tmp_path):
    rf.export_steps(steps, tmp_path / "sft", "llamafactory", images=_store(steps))
    rf.export_steps(steps, tmp_path / "rl", "easyr1", images=_store(steps))
    rf.import_steps(tmp_path / "sft", tmp_path / "sft-back", "llamafactory")
    rf.import_steps(tmp_path / "rl", tmp_path / "rl-back", "easyr1", editor="painter")
    sft = thinker_dataset(
        _rows(tmp_path / "sft-back"), completion=True, images=ImageStore(tmp_path / "sft-back" / "images")
    )
    assert sft.num_rows > 0 and sft[0]["completion"][0]["content"].startswith("<think>")
    keep = ("editor", "seed", "source_image", "target_semantic", "target_quality")
    rl_store = ImageStore(tmp_path / "rl-back" / "images")
    rl = thinker_dataset(_rows(tmp_path / "rl-back"), completion=False, images=rl_store, keep=keep)
    assert rl.num_rows > 0 and rl[0]["editor"] == "painter"
    assert len(rl[0]["images"]) == 2


def test_cli_export_and_import(steps, tmp_path, monkeypatch):
    runner = CliRunner()
    out = tmp_path / "out"
    store = ["--images", str(_store(steps))]
    monkeypatch.chdir(tmp_path)  # the default store, data/trajectories/images, is relative: absent here
    res = runner.invoke(app, ["export", "--format", "easyr1", "--data", str(steps), "--out", str(out)])
    assert res.exit_code != 0 and "no image store there" in res.output
    res = runner.invoke(app, ["export", "--format", "easyr1", "--data", str(steps), "--out", str(out), *store])
    assert res.exit_code == 0, res.output
    assert (out / rf.RL_FILE).is_file()
    res = runner.invoke(app, ["import", "--format", "easyr1", "--data", str(out), "--out", str(tmp_path / "ds")])
    assert res.exit_code == 0, res.output
    assert read_manifest(tmp_path / "ds")["rows"] == len(_rows(steps))
    res = runner.invoke(app, ["export", "--format", "parquet", "--data", str(steps), "--out", str(out)])
    assert res.exit_code == 2
    # a user's template and absolute image paths
    (tmp_path / "t.txt").write_text("<image><image>want {original_instruction}; used {rewritten_prompt}")
    args = ["--format", "llamafactory", "--template", str(tmp_path / "t.txt")]
    res = runner.invoke(app, ["export", *args, "--data", str(steps), "--out", str(out), "--absolute-paths", *store])
    assert res.exit_code == 0, res.output
    records = json.loads((out / rf.SFT_FILE).read_text())
    assert records[0]["messages"][0]["content"].startswith("<image><image>want ")
    assert all(Path(p).is_absolute() and Path(p).is_file() for r in records for p in r["images"])
    res = runner.invoke(app, ["import", *args, "--data", str(out), "--out", str(tmp_path / "lf")])
    assert res.exit_code == 0, res.output
    assert read_manifest(tmp_path / "lf")["rows"] == len(records)


@pytest.mark.slow
def test_sft_and_rl_stages_train_on_imported_samples(steps, tmp_path):
    from editthinker.stages import rl, sft

    rf.export_steps(steps, tmp_path / "sft", "llamafactory", images=_store(steps))
    rf.export_steps(steps, tmp_path / "rl", "easyr1", images=_store(steps))
    rf.import_steps(tmp_path / "sft", tmp_path / "sft-back", "llamafactory")
    rf.import_steps(tmp_path / "rl", tmp_path / "rl-back", "easyr1", editor="painter")
    rl_params = {"max_steps": 1, "batch_size": 4, "num_generations": 2, "select": None}
    p = parse_params({"sft": {"max_steps": 2, "batch_size": 2}, "rl": rl_params})
    s = sft.run(p, tmp_path / "sft-back", tmp_path / "m-sft")
    assert s["steps"] == 2 and s["samples"] == read_manifest(tmp_path / "sft-back")["rows"]
    r = rl.run(p, tmp_path / "rl-back", tmp_path / "m-sft", tmp_path / "m-rl")
    assert r["steps"] == 1 and r["samples"] == read_manifest(tmp_path / "rl-back")["rows"]
