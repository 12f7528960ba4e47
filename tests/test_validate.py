"""The validate stage: great-expectations suites over trajectories and step samples, streamed, failures named by row
id; images are hashes into the image store the datasets name."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import pytest

from editthinker.config import Params
from editthinker.images import image_record, sha256_bytes, store_ref, write_image_store
from editthinker.protocol import format_thinker_answer
from editthinker.records import STEP_SAMPLE_SCHEMA, TRAJECTORY_SCHEMA, write_dataset
from editthinker.stages import validate
from editthinker.world.scene import render_png
from editthinker.world.tasks import make_task

SIZE = 64
IMAGES: dict[str, bytes] = {}  # every image the rows below refer to, by sha256 (written into the store)


def _h(png: bytes) -> str:
    IMAGES[sha256_bytes(png)] = png
    return sha256_bytes(png)


PARAMS = Params()  # world.image_size 64, editors painter + mover
EDITORS = [e.name for e in PARAMS.editors]


def _task(i: int):
    return make_task(4321, i, 2, 4, PARAMS.world.styles)


def trajectory_rows(n_tasks: int = 3, turns: int = 2) -> list[dict[str, Any]]:
    rows = []
    for i in range(n_tasks):
        task = _task(i)
        src, tgt = render_png(task.source, SIZE), render_png(task.target, SIZE)
        for turn in range(1, turns + 1):
            sem, qual = 4.0 + 2 * turn, 9.0
            rows.append(
                {
                    "trajectory_id": f"traj-{i}",
                    "task_id": task.task_id,
                    "source": "world",
                    "task_type": task.op.op,
                    "editor": EDITORS[i % len(EDITORS)],
                    "seed": 4321,
                    "reference": task.target.to_json(),
                    "metadata": task.metadata(),
                    "source_image": _h(src),
                    "original_instruction": task.instruction,
                    "turn": turn,
                    "instruction": task.instruction if turn == 1 else f"{task.instruction} (refined {turn})",
                    "image": _h(tgt if turn == turns else src),
                    "semantic": sem,
                    "quality": qual,
                    "overall": math.sqrt(sem * qual),
                    "has_critique": True,
                    "critique_raw": "{}",
                    "critique_reason": "looks off",
                    "critique_satisfied": turn == turns,
                    "next_instruction": "" if turn == turns else "refined",
                    "stop_reason": "satisfied" if turn == turns else "",
                }
            )
    return rows


def step_rows(split: str, n: int = 4) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        task = _task(100 + i)
        src = render_png(task.source, SIZE)
        rows.append(
            {
                "sample_id": f"{split}-{i}",
                "trajectory_id": f"traj-{100 + i}",
                "task_id": task.task_id,
                "source": "world",
                "task_type": task.op.op,
                "editor": EDITORS[i % len(EDITORS)],
                "seed": 4321,
                "step": 2,
                "reference": task.target.to_json(),
                "metadata": task.metadata(),
                "source_image": _h(src),
                "previous_image": _h(src),
                "original_instruction": task.instruction,
                "previous_instruction": task.instruction,
                "target_reason": "the edit is missing",
                "target_semantic": 2.0,
                "target_quality": 9.0,
                "target_answer": f"{task.instruction} now",
                "target_text": format_thinker_answer("the edit is missing", 2.0, 9.0, f"{task.instruction} now"),
                "trajectory_score_var": 5.0,
                "split": split,
            }
        )
    return rows


def _write_all(
    root: Path, traj: list | None = None, sft: list | None = None, rl: list | None = None
) -> dict[str, Path]:
    """The three datasets, the image store inside trajectories/ (as generate writes it), named by all three."""
    paths = {k: root / k for k in ("trajectories", "sft", "rl")}
    traj, sft, rl = traj or trajectory_rows(), sft or step_rows("sft"), rl or step_rows("rl")
    columns = ("source_image", "image", "previous_image")
    used = sorted({r[c] for r in [*traj, *sft, *rl] for c in columns if c in r and r[c] in IMAGES})
    ref: dict[str, Any] = {}

    def store(folder: Path) -> dict[str, Any]:
        ref.update(store_ref(write_image_store(folder / "images", (_record(IMAGES[h]) for h in used))))
        return {"images": ref}

    write_dataset(paths["trajectories"], traj, TRAJECTORY_SCHEMA, rows_per_shard=4, beside=store)
    write_dataset(paths["sft"], sft, STEP_SAMPLE_SCHEMA, rows_per_shard=3, extra={"images": ref})
    write_dataset(paths["rl"], rl, STEP_SAMPLE_SCHEMA, rows_per_shard=3, extra={"images": ref})
    return paths


def _record(data: bytes) -> dict[str, Any]:
    """A store row; bytes that do not decode are stored as they are, said to be a 64 x 64 PNG."""
    try:
        return image_record(data)
    except Exception:
        return {"sha256": sha256_bytes(data), "bytes": data, "width": SIZE, "height": SIZE, "format": "PNG"}


def _run(root: Path, paths: dict[str, Path]) -> dict:
    return validate.run(PARAMS, paths["trajectories"], paths["sft"], paths["rl"], root / "report")


def _report(root: Path) -> dict:
    return json.loads((root / "report" / "report.json").read_text())


def _failures(report: dict, dataset: str) -> list[dict]:
    return report["datasets"][dataset]["failures"]


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def valid(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("valid")
    return root, _run(root, _write_all(root))


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One run over datasets with several independent defects, each in its own row."""
    root = tmp_path_factory.mktemp("broken")
    traj = trajectory_rows(n_tasks=4)  # rows: traj-i turn 1, traj-i turn 2
    traj[3]["image"] = _h(IMAGES[traj[3]["image"]][:40] + b"garbage" * 5)  # traj-1 turn 2: corrupt PNG
    traj[0]["quality"] = 12.0  # traj-0 turn 1: out of range (overall kept consistent and in range)
    traj[0]["overall"] = math.sqrt(traj[0]["semantic"] * 12.0)
    traj[5]["overall"] += 0.01  # traj-2 turn 2: overall != sqrt(SC * PQ)
    traj[1]["editor"] = "picasso"  # traj-0 turn 2: not a configured editor
    traj[6]["turn"] = 2  # traj-3: turn 2 twice
    sft = step_rows("sft")
    sft[1]["previous_image"] = sha256_bytes(render_png(_task(101).source, 48))  # an image not in the store
    sft[0]["split"] = "rl"
    sft[3]["sample_id"] = sft[2]["sample_id"]
    rl = step_rows("rl")
    rl[2]["target_text"] = "<think>hm</think><answer>no score</answer>"
    paths = _write_all(root, traj=traj, sft=sft, rl=rl)
    before = _digests(root)
    with pytest.raises(validate.ValidationFailed) as info:
        _run(root, paths)
    after = {k: v for k, v in _digests(root).items() if not k.startswith("report")}
    return {"root": root, "message": str(info.value), "report": _report(root), "before": before, "after": after}


def _by_column(report: dict, dataset: str) -> dict[str, dict]:
    return {str(f["column"]): f for f in _failures(report, dataset)}


def test_valid_data_passes(valid: tuple[Path, dict]) -> None:
    root, result = valid
    report = _report(root)
    assert result["success"] is True and report["success"] is True
    for name, rows in (("trajectories", 6), ("sft", 4), ("rl", 4)):
        ds = report["datasets"][name]
        assert ds["success"] is True, ds["failures"]
        assert ds["rows"] == rows
        assert ds["counts"]["failed"] == 0 and ds["counts"]["expectations"] > 10
    assert report["lineage"]["stage"] == "validate"
    assert set(report["lineage"]["inputs"]) == {"trajectories", "sft", "rl", "images"}
    assert report["lineage"]["inputs"]["images"] == report["image_store_sha256"]
    assert "PASS" in (root / "report" / "report.md").read_text()


def test_a_store_other_than_the_one_the_datasets_name_is_a_clear_error(tmp_path: Path) -> None:
    from editthinker.images import ImageStoreMismatch

    paths = _write_all(tmp_path)
    write_image_store(tmp_path / "other", [_record(next(iter(IMAGES.values())))])
    with pytest.raises(ImageStoreMismatch, match="is not the one the dataset"):
        validate.run(PARAMS, paths["trajectories"], paths["sft"], paths["rl"], tmp_path / "report", tmp_path / "other")


def test_failed_validation_still_writes_report(broken: dict[str, Any]) -> None:
    report = broken["report"]
    assert report["success"] is False
    assert {n: d["success"] for n, d in report["datasets"].items()} == {
        "trajectories": False,
        "sft": False,
        "rl": False,
    }
    assert report["lineage"]["stage"] == "validate"
    assert "FAIL" in (broken["root"] / "report" / "report.md").read_text()


def test_inputs_untouched(broken: dict[str, Any]) -> None:
    assert len(broken["before"]) == 3 + 2 + 2 + 2 + 2  # 3 manifests + every shard + the image store was hashed
    assert broken["after"] == broken["before"]


def test_corrupt_image_names_row(broken: dict[str, Any]) -> None:
    fail = _by_column(broken["report"], "trajectories")["image_ok"]
    assert fail["expectation"] == "expect_column_values_to_be_in_set"
    assert fail["rows"] == [{"trajectory_id": "traj-1", "turn": 2}]
    assert "trajectories: expect_column_values_to_be_in_set(image_ok)" in broken["message"]
    assert "(trajectory_id=traj-1, turn=2)" in broken["message"]


def test_out_of_range_score_names_column(broken: dict[str, Any]) -> None:
    by_col = _by_column(broken["report"], "trajectories")
    assert by_col["quality"]["expectation"] == "expect_column_values_to_be_between"
    assert by_col["quality"]["rows"] == [{"trajectory_id": "traj-0", "turn": 1}]
    assert "semantic" not in by_col and "overall" not in by_col
    assert "expect_column_values_to_be_between(quality)" in broken["message"]


def test_overall_mismatch_editor_and_duplicate_turn(broken: dict[str, Any]) -> None:
    by_col = _by_column(broken["report"], "trajectories")
    assert by_col["overall_error"]["rows"] == [{"trajectory_id": "traj-2", "turn": 2}]
    assert by_col["editor"]["rows"] == [{"trajectory_id": "traj-0", "turn": 2}]
    assert by_col["['trajectory_id', 'turn']"]["rows"] == [{"trajectory_id": "traj-3", "turn": 2}] * 2
    assert set(by_col) == {"image_ok", "quality", "overall_error", "editor", "['trajectory_id', 'turn']"}


def test_step_sample_failures(broken: dict[str, Any]) -> None:
    by_col = _by_column(broken["report"], "sft")
    assert by_col["previous_image_ok"]["rows"] == [{"sample_id": "sft-1"}]
    assert by_col["split"]["rows"] == [{"sample_id": "sft-0"}]
    assert by_col["sample_id"]["expectation"] == "expect_column_values_to_be_unique"
    assert by_col["sample_id"]["rows"] == [{"sample_id": "sft-2"}] * 2
    assert set(by_col) == {"previous_image_ok", "split", "sample_id"}


def test_unparsable_target_text_names_sample(broken: dict[str, Any]) -> None:
    (fail,) = _failures(broken["report"], "rl")
    assert fail["column"] == "target_text_ok"
    assert fail["rows"] == [{"sample_id": "rl-2"}]
    assert "rl: expect_column_values_to_be_in_set(target_text_ok)" in broken["message"]
    assert "(sample_id=rl-2)" in broken["message"]


def test_missing_dataset_still_reports(tmp_path: Path) -> None:
    paths = _write_all(tmp_path)
    paths["rl"] = tmp_path / "nope"
    with pytest.raises(validate.ValidationFailed, match="rl: unreadable"):
        _run(tmp_path, paths)
    report = _report(tmp_path)
    assert report["datasets"]["rl"]["success"] is False
    assert report["datasets"]["trajectories"]["success"] is True


def test_import_is_cheap() -> None:
    import subprocess
    import sys

    code = "import sys, editthinker.stages.validate; print('great_expectations' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------------------------------- streaming


def _comparable(report: dict) -> dict:
    """The failures of every dataset, without the batch count."""
    return {name: (ds["rows"], ds["failures"]) for name, ds in report["datasets"].items()}


def test_same_report_whatever_the_batch_size(broken: dict[str, Any], tmp_path: Path) -> None:
    root = broken["root"]
    paths = {k: root / k for k in ("trajectories", "sft", "rl")}
    with pytest.raises(validate.ValidationFailed) as info:
        validate.run(PARAMS, paths["trajectories"], paths["sft"], paths["rl"], tmp_path / "report", batch_rows=1)
    one_by_one = json.loads((tmp_path / "report" / "report.json").read_text())
    assert one_by_one["datasets"]["trajectories"]["counts"]["batches"] == 8  # one per row
    assert broken["report"]["datasets"]["trajectories"]["counts"]["batches"] == 2  # one per shard
    assert _comparable(one_by_one) == _comparable(broken["report"])
    assert str(info.value).replace(str(tmp_path), "") == broken["message"].replace(str(root), "")


def test_bad_rows_in_a_later_shard_and_batch_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Defects in the last shard (and its last batch) are reported by id, a duplicate across shards too, while no
    batch holds more than `batch_rows` rows."""
    sizes: list[int] = []
    real = validate.iter_batches

    def spy(*args: Any, **kwargs: Any):
        for names, batch in real(*args, **kwargs):
            sizes.append(len(batch))
            yield names, batch

    monkeypatch.setattr(validate, "iter_batches", spy)
    traj = trajectory_rows(n_tasks=6)  # 12 rows: shards of 4, batches of 3 -> 3 shards x 2 batches
    traj[11]["semantic"] = -1.0  # traj-5 turn 2: the last row of the last shard
    traj[11]["overall"] = 0.0
    sft = step_rows("sft", n=7)  # shards of 3: sft-6 alone in the third shard
    sft[6]["sample_id"] = "sft-0"  # a duplicate of a row of the first shard
    sft[5]["target_text"] = "no tags"
    paths = _write_all(tmp_path, traj=traj, sft=sft)
    with pytest.raises(validate.ValidationFailed, match=r"\(trajectory_id=traj-5, turn=2\)"):
        validate.run(PARAMS, paths["trajectories"], paths["sft"], paths["rl"], tmp_path / "report", batch_rows=3)
    report = _report(tmp_path)
    traj_ds = report["datasets"]["trajectories"]
    assert traj_ds["rows"] == 12 and traj_ds["counts"]["batches"] == 6
    by_col = _by_column(report, "trajectories")
    assert by_col["semantic"]["rows"] == [{"trajectory_id": "traj-5", "turn": 2}]
    assert by_col["semantic"]["unexpected_count"] == 1
    assert by_col["semantic"]["unexpected_values"] == [{"value": -1.0, "count": 1}]
    sft_fail = _by_column(report, "sft")
    assert sft_fail["sample_id"]["rows"] == [{"sample_id": "sft-0"}] * 2
    assert sft_fail["target_text_ok"]["rows"] == [{"sample_id": "sft-5"}]
    assert report["datasets"]["rl"]["success"] is True
    assert sizes and max(sizes) <= 3  # no batch held more than batch_rows rows ...
    assert len(sizes) == 6 + 2 * 3 + 2  # ... and each dataset was read in several (sft twice: to name its duplicate)


def test_an_empty_dataset_passes(tmp_path: Path) -> None:
    paths = _write_all(tmp_path)
    images = json.loads((paths["rl"] / "manifest.json").read_text())["images"]
    write_dataset(paths["rl"], [], STEP_SAMPLE_SCHEMA, rows_per_shard=3, extra={"images": images})
    report = _run(tmp_path, paths)
    assert report["datasets"]["rl"]["success"] is True and report["datasets"]["rl"]["rows"] == 0


def test_png_size_reads_the_header() -> None:
    png = render_png(_task(0).source, SIZE)
    assert validate.png_size(png) == (SIZE, SIZE)
    assert validate.png_size(png[:20]) is None and validate.png_size(b"GIF89a" + png[6:]) is None


def test_great_expectations_agrees_on_the_broken_datasets(broken: dict[str, Any]) -> None:
    """The suites run by great-expectations on each whole (small) dataset fail exactly the expectations and rows
    the streamed evaluation reports."""
    import warnings

    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    from editthinker.records import read_manifest, read_table

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    suites = {"trajectories": validate.trajectory_suite(PARAMS)}
    suites |= {s: validate.step_sample_suite(PARAMS, s) for s in ("sft", "rl")}
    for name, suite in suites.items():
        path = broken["root"] / name
        frame = validate.computed_frame(read_table(path), PARAMS, name, broken["root"] / "trajectories" / "images")
        id_cols = list(validate.ID_COLUMNS[name])
        batch = context.data_sources.add_pandas(f"{name}_source").add_dataframe_asset(name)
        gx_suite = context.suites.add(validate.to_great_expectations(suite, int(read_manifest(path)["rows"])))
        vdef = context.validation_definitions.add(
            gx.ValidationDefinition(name=name, data=batch.add_batch_definition_whole_dataframe(name), suite=gx_suite)
        )
        fmt = {"result_format": "COMPLETE", "unexpected_index_column_names": id_cols}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = vdef.run(batch_parameters={"dataframe": frame}, result_format=fmt)
        by_ge = {}
        for r in result.results:
            if not r.success:
                kw = r.expectation_config.kwargs
                rows = [{c: validate._jsonable(ix[c]) for c in id_cols} for ix in r.result["unexpected_index_list"]]
                by_ge[(r.expectation_config.type, str(kw.get("column", kw.get("column_list"))))] = sorted(
                    map(str, rows)
                )
        ours = {
            (f["expectation"], str(f["column"])): sorted(str(r) for r in f["rows"])
            for f in _failures(broken["report"], name)
        }
        assert ours == by_ge, name
        assert len(result.results) == broken["report"]["datasets"][name]["counts"]["expectations"]


def test_each_stored_image_is_decoded_once_per_run(valid: tuple[Path, dict]) -> None:
    """The store is read once for the three datasets: every stored image decoded once, however many rows name it."""
    from editthinker.images import ImageStore

    root, result = valid
    store = ImageStore(root / "trajectories" / "images")
    named = 6 * 2 + 4 * 2 + 4 * 2  # image columns of the trajectory and step-sample rows
    assert len(store) < named
    assert result["images_checked"] == len(store)


def test_a_stored_image_must_decode_at_its_recorded_size() -> None:
    import io

    from PIL import Image

    png = render_png(_task(0).source, SIZE)
    good = image_record(png)
    assert validate.stored_image_ok(good)
    assert not validate.stored_image_ok({**good, "width": SIZE // 2})  # the header disagrees with the record
    assert not validate.stored_image_ok({**good, "bytes": png[: len(png) // 2]})  # a good header, a cut body
    jpeg = io.BytesIO()
    Image.new("RGB", (SIZE, 32), (200, 10, 10)).save(jpeg, format="JPEG")
    assert validate.stored_image_ok(image_record(jpeg.getvalue()))  # another format: its header through PIL
    assert not validate.stored_image_ok({**image_record(jpeg.getvalue()), "height": SIZE})


def test_image_lookup_is_exact_on_every_digest_byte() -> None:
    """Rows name images by full sha256: a hash that differs in its last byte is not in the store, a digest ending in
    zero bytes is found."""
    png = render_png(_task(0).source, SIZE)
    shas = sorted(["00" * 31 + "01", "ab" * 30 + "0000", "ab" * 30 + "0001", "ff" * 32])

    class Store:
        def iter_images(self):
            return iter([{**image_record(png), "sha256": s} for s in shas])

    images = validate.StoreImages(Store())  # type: ignore[arg-type]
    assert all(images(s) for s in shas)
    assert not images("ab" * 30 + "0002") and not images("00" * 32) and not images("ab" * 31)
    assert not images("zz" * 32) and not images(None) and images.decoded == len(shas)
    assert not validate.StoreImages(None)(shas[0])  # no store: every image fails
