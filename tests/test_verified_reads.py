"""Every read of a dataset or a checkpoint checks the sha256s its manifest lists and fails naming the file;
lineage records the hashes of what was verified."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from editthinker.config import ThinkerModelConfig, parse_params
from editthinker.lineage import hash_path, verify_checkpoint
from editthinker.records import _WRITE_OPTS, dataset_hash, iter_rows, read_manifest, verify_dataset
from editthinker.stages import filter as filter_stage
from editthinker.stages import generate, split
from editthinker.storage import CHECKSUMS_FILE, IntegrityError, sha256_file

SMALL = parse_params({"generate": {"num_tasks": 12, "max_turns": 3, "shards": 2}})


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    generate.run(SMALL, root / "traj")
    filter_stage.run(SMALL, root / "traj", root / "filt")
    return root


def fresh_copy(src: Path, dst: Path) -> Path:
    """A copy of a dataset folder, its image store (images/) included."""
    shutil.copytree(src, dst)
    return dst


def flip_bytes(shard: Path) -> None:
    data = bytearray(shard.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 64] = bytes(b ^ 0xFF for b in data[mid : mid + 64])
    shard.write_bytes(bytes(data))


def change_instruction(shard: Path) -> None:
    table = pq.read_table(shard)
    rows = table.to_pylist()
    rows[0]["instruction"] = rows[0]["instruction"] + " and paint everything green"
    pq.write_table(type(table).from_pylist(rows, schema=table.schema), shard, **_WRITE_OPTS)


def foreign_image(shard: Path) -> None:
    """A row made to refer to an image (by hash) that is not in the store."""
    table = pq.read_table(shard)
    rows = table.to_pylist()
    rows[0]["image"] = hashlib.sha256(b"an image from elsewhere").hexdigest()
    pq.write_table(type(table).from_pylist(rows, schema=table.schema), shard, **_WRITE_OPTS)


TAMPER = {"flipped-bytes": flip_bytes, "changed-instruction": change_instruction, "foreign-image": foreign_image}


@pytest.mark.parametrize("tamper", TAMPER)
def test_filter_fails_naming_a_changed_trajectory_shard(datasets, tmp_path, tamper):
    traj = fresh_copy(datasets / "traj", tmp_path / "traj")
    shard = traj / sorted(read_manifest(traj)["files"])[1]
    TAMPER[tamper](shard)
    with pytest.raises(IntegrityError, match=rf"{shard}: sha256 [0-9a-f]{{64}} is not the [0-9a-f]{{64}} its manifest"):
        filter_stage.run(SMALL, traj, tmp_path / "filt")
    assert not (tmp_path / "filt").exists()


@pytest.mark.parametrize("tamper", ["flipped-bytes", "changed-instruction"])
def test_split_fails_naming_a_changed_filtered_shard(datasets, tmp_path, tamper):
    filt = fresh_copy(datasets / "filt", tmp_path / "filt")
    shard = filt / sorted(read_manifest(filt)["files"])[0]
    TAMPER[tamper](shard)
    with pytest.raises(IntegrityError, match=str(shard)):
        split.run(SMALL, filt, tmp_path / "sft", tmp_path / "rl")
    assert not (tmp_path / "sft").exists() and not (tmp_path / "rl").exists()


def test_a_missing_shard_and_a_changed_manifest_are_named(datasets, tmp_path):
    traj = fresh_copy(datasets / "traj", tmp_path / "traj")
    manifest = json.loads((traj / "manifest.json").read_text())
    name = sorted(manifest["files"])[0]
    # a manifest made to list a changed shard's hash, but not its dataset hash
    flip_bytes(traj / name)
    manifest["files"][name] = sha256_file(traj / name)
    (traj / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IntegrityError, match=rf"{traj / 'manifest.json'}: dataset_sha256 is not the hash"):
        list(iter_rows(traj))
    (traj / name).unlink()
    manifest["dataset_sha256"] = dataset_hash(manifest["files"])
    (traj / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IntegrityError, match=rf"{traj / name}: listed in its manifest but missing"):
        list(iter_rows(traj))


def test_lineage_records_the_hash_of_the_verified_shards(datasets):
    traj = datasets / "traj"
    on_disk = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in traj.glob("*.parquet")}
    lineage = read_manifest(datasets / "filt")["lineage"]
    assert lineage["inputs"]["trajectories"] == dataset_hash(on_disk) == verify_dataset(traj) == hash_path(traj)


# -- checkpoints ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from editthinker.models.tiny_vlm import MODEL_KIND, build_tiny_thinker
    from editthinker.models.vlm import save_thinker

    path = tmp_path_factory.mktemp("ckpt") / "sft"
    model, processor = build_tiny_thinker(ThinkerModelConfig(hidden_size=32, num_heads=2, max_new_tokens=8), seed=0)
    save_thinker(model, processor, path, MODEL_KIND)
    return path


def test_a_saved_checkpoint_lists_the_sha256_of_every_file(checkpoint):
    listed = json.loads((checkpoint / CHECKSUMS_FILE).read_text())["files"]
    files = sorted(p.name for p in checkpoint.iterdir() if p.name != CHECKSUMS_FILE)
    assert sorted(listed) == files and "model.safetensors" in listed
    assert all(listed[n] == sha256_file(checkpoint / n) for n in files)
    assert verify_checkpoint(checkpoint) == hash_path(checkpoint)


def test_a_changed_checkpoint_is_refused_by_every_reader(checkpoint, tmp_path):
    from editthinker.models.vlm import load_thinker
    from editthinker.stages import evaluate, rl

    bad = fresh_copy(checkpoint, tmp_path / "bad")
    flip_bytes(bad / "model.safetensors")
    named = rf"{bad / 'model.safetensors'}: sha256 [0-9a-f]{{64}} is not the"
    for read in (load_thinker, hash_path, verify_checkpoint):
        with pytest.raises(IntegrityError, match=named):
            read(bad)
    params = parse_params({"thinker": {"hidden_size": 32, "num_heads": 2, "max_new_tokens": 8}})
    with pytest.raises(IntegrityError, match=named):  # before any sample is read or any step taken
        rl.run(params, tmp_path / "no-data", bad, tmp_path / "rl")
    with pytest.raises(IntegrityError, match=named):
        evaluate.run(params, checkpoint, bad, tmp_path / "eval")
    assert not (tmp_path / "rl").exists() and not (tmp_path / "eval").exists()


def test_an_added_or_unlisted_checkpoint_file_is_refused(checkpoint, tmp_path):
    from editthinker.models.vlm import load_thinker

    extra = fresh_copy(checkpoint, tmp_path / "extra")
    (extra / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    with pytest.raises(IntegrityError, match=r"adapter_model.safetensors: not listed in"):
        load_thinker(extra)
    (extra / "adapter_model.safetensors").unlink()
    (extra / "metrics.json").write_text("{}")  # descriptive files may be added (lineage.json, metrics.json)
    load_thinker(extra)
    bare = fresh_copy(checkpoint, tmp_path / "bare")
    (bare / CHECKSUMS_FILE).unlink()
    load_thinker(bare)  # a released model folder has no checksums: loaded as it is
    with pytest.raises(IntegrityError, match=f"{bare}: a checkpoint without {CHECKSUMS_FILE}"):
        verify_checkpoint(bare)  # ... but a stage's input checkpoint must have them


def test_validate_reports_a_changed_shard_as_unreadable_naming_the_file(datasets, tmp_path):
    from editthinker.stages import validate

    traj = fresh_copy(datasets / "traj", tmp_path / "traj")
    split.run(SMALL, datasets / "filt", tmp_path / "sft", tmp_path / "rl")
    shard = traj / sorted(read_manifest(traj)["files"])[0]
    flip_bytes(shard)
    with pytest.raises(validate.ValidationFailed, match="trajectories: unreadable"):
        validate.run(SMALL, traj, tmp_path / "sft", tmp_path / "rl", tmp_path / "report")
    report = json.loads((tmp_path / "report" / "report.json").read_text())  # written all the same
    assert f"{shard}: sha256" in report["datasets"]["trajectories"]["error"]
    assert report["datasets"]["sft"]["success"] and report["datasets"]["rl"]["success"]
    # only what was read and verified: the step samples and the image store (not the changed trajectories)
    assert set(report["lineage"]["inputs"]) == {"sft", "rl", "images"}
    assert report["lineage"]["inputs"]["images"] == verify_dataset(traj / "images")
    assert report["lineage"]["inputs"]["sft"] == verify_dataset(tmp_path / "sft")
