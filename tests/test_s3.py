"""The S3 artifact store and the alias compare-and-swap, against a real S3 HTTP server on loopback.

The server is moto's `ThreadedMotoServer` (see tests/s3_server.py for why, and for the one guarantee we add to
it): boto3 talks HTTP to 127.0.0.1:<free port> exactly as it would to AWS or MinIO, with credentials from the
environment. Used here: buckets, put/get/list/delete, managed (multipart) upload/download, and conditional
PutObject (`If-Match`, `If-None-Match: *`).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
from boto3.s3.transfer import TransferConfig

from editthinker.config import ConfigError, S3Config, parse_params
from editthinker.records import read_manifest
from editthinker.stages import generate
from editthinker.storage_s3 import ArtifactConflict, ArtifactNotFound, S3Store, dvc_remote_commands, file_index
from s3_server import isolated_bucket, loopback_s3

KEY_ID = "AKIDTESTS3KEYID0042"
SECRET = "s3cr3t-ZX8qv2-never-written-anywhere"
MIB = 1 << 20
SMALL_PARTS = TransferConfig(multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB)  # S3's minimum part


@pytest.fixture(scope="module")
def endpoint():
    with loopback_s3() as url:
        yield url


@pytest.fixture
def cfg(endpoint, monkeypatch, tmp_path):
    bucket = isolated_bucket(endpoint, monkeypatch, tmp_path, KEY_ID, SECRET, "et")
    return S3Config(endpoint_url=endpoint, bucket=bucket, prefix="/factory/", region="us-east-1")


@pytest.fixture
def dataset(tmp_path) -> Path:
    """A real dataset directory (parquet shards + manifest.json) plus a 6 MiB blob that forces a multipart upload."""
    out = tmp_path / "trajectories"
    generate.run(parse_params({"generate": {"num_tasks": 6, "max_turns": 2, "shards": 2}}), out)
    (out / "blobs").mkdir()
    (out / "blobs" / "big.bin").write_bytes(os.urandom(6 * MIB))
    return out


def all_objects(store: S3Store) -> dict[str, bytes]:
    c, b = store.client, store.cfg.bucket
    keys = [
        o["Key"] for page in c.get_paginator("list_objects_v2").paginate(Bucket=b) for o in page.get("Contents", [])
    ]
    return {k: c.get_object(Bucket=b, Key=k)["Body"].read() for k in keys}


def test_dataset_round_trip_is_byte_for_byte(cfg, dataset, tmp_path):
    store = S3Store(cfg, transfer=SMALL_PARTS)
    assert not store.exists("datasets/trajectories")
    for bad in ("", "../up", "a//b", "a/_COMPLETE"):
        with pytest.raises(ValueError, match="bad artifact name"):
            store.upload_dir(dataset, bad)
    marker = store.upload_dir(dataset, "datasets/trajectories")
    assert store.exists("datasets/trajectories")
    rows = {"manifest.json", "part-00000.parquet", "part-00001.parquet", "blobs/big.bin"}
    images = {"images/manifest.json", "images/part-00000.parquet"}  # a trajectories dataset holds its image store
    assert set(marker["files"]) == rows | images

    big_key = store.key("artifacts", "datasets/trajectories", marker["upload_id"], "blobs/big.bin")
    assert big_key.startswith("factory/artifacts/")  # the prefix, slashes trimmed
    etag = store.client.head_object(Bucket=cfg.bucket, Key=big_key)["ETag"]
    assert etag.strip('"').endswith("-2")  # stored as a two-part multipart upload

    back = store.download_dir("datasets/trajectories", tmp_path / "back")
    assert file_index(back) == file_index(dataset)
    for rel in marker["files"]:
        assert (back / rel).read_bytes() == (dataset / rel).read_bytes()
    assert read_manifest(back) == read_manifest(dataset)

    # immutable: the same content again is a no-op, different content under the same name is refused
    assert store.upload_dir(dataset, "datasets/trajectories")["upload_id"] == marker["upload_id"]
    (dataset / "manifest.json").write_text("{}")
    with pytest.raises(ArtifactConflict):
        store.upload_dir(dataset, "datasets/trajectories")


class _CrashAfter:
    """A boto3 client whose upload_file fails after `n` successful uploads (a process dying mid-upload)."""

    def __init__(self, client, n: int) -> None:
        self._client, self._left = client, n

    def upload_file(self, *args, **kwargs):
        if self._left == 0:
            raise ConnectionError("simulated crash mid-upload")
        self._left -= 1
        return self._client.upload_file(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._client, name)


def test_a_half_uploaded_artifact_is_absent_to_readers(cfg, dataset, tmp_path):
    healthy = S3Store(cfg)
    crashing = S3Store(cfg, client=_CrashAfter(healthy.client, n=2))
    with pytest.raises(ConnectionError):
        crashing.upload_dir(dataset, "datasets/half")

    uploaded = [k for k in all_objects(healthy) if "/datasets/half/" in k]
    assert len(uploaded) == 2  # two of four files really are on S3 ...
    assert not healthy.exists("datasets/half")  # ... but with no marker the artifact does not exist
    previous = tmp_path / "local"
    previous.mkdir()
    (previous / "old.txt").write_text("previous download")
    with pytest.raises(ArtifactNotFound):
        healthy.download_dir("datasets/half", previous)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".local")] == []  # no temp dir left
    assert (previous / "old.txt").read_text() == "previous download"  # the earlier copy is untouched

    healthy.upload_dir(dataset, "datasets/half")  # a retry completes it
    assert file_index(healthy.download_dir("datasets/half", previous)) == file_index(dataset)


def test_credentials_are_in_no_written_file_object_or_log(cfg, dataset, tmp_path, caplog):
    caplog.set_level("DEBUG", logger="editthinker")
    store = S3Store(cfg)
    store.upload_dir(dataset, "datasets/creds")
    store.download_dir("datasets/creds", tmp_path / "dl")
    store.update_alias("champion", lambda cur: {"version": "v0001"})
    assert store.get_alias("champion")[0] == {"version": "v0001"}  # the calls above really used S3

    written = [p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()]
    stored = [k.encode() + body for k, body in all_objects(store).items()]
    assert len(stored) >= 5
    for blob in [*written, *stored, caplog.text.encode(), str(dvc_remote_commands(cfg)).encode()]:
        assert KEY_ID.encode() not in blob and SECRET.encode() not in blob

    with pytest.raises(ConfigError, match="s3.aws_secret_access_key: unknown key"):
        parse_params({"s3": {"bucket": "b", "aws_secret_access_key": "x"}})


def _racing(barrier: threading.Barrier):
    """A decide() wrapper whose first call waits until every racer has read the alias: all read the same state."""

    def wrap(decide):
        first = [True]

        def inner(current):
            new = decide(current)
            if first[0]:
                first[0] = False
                barrier.wait(timeout=30)
            return new

        return inner

    return wrap


def _run(*targets):
    threads = [threading.Thread(target=t) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)


def test_two_concurrent_promotions_cannot_both_win(cfg):
    store = S3Store(cfg)
    store.update_alias("champion", lambda cur: {"version": "v0001", "overall": 5.0})
    barrier = threading.Barrier(2)
    wrap = _racing(barrier)
    first_cas: dict[str, bool] = {}

    class Recording(S3Store):
        def cas_alias(self, alias, value, expected_etag):
            etag = super().cas_alias(alias, value, expected_etag)
            first_cas.setdefault(value["version"], etag is not None)
            return etag

    def promote(version: str, overall: float):
        def decide(cur):  # the challenger must beat the champion it read
            return {"version": version, "overall": overall} if cur is None or overall > cur["overall"] else None

        return lambda: Recording(cfg).update_alias("champion", wrap(decide))

    _run(promote("v0002", 7.0), promote("v0003", 8.0))
    assert sorted(first_cas.values()) == [False, True]  # both read v0001 and tried; exactly one swap succeeded
    # the loser re-read and re-decided: the best challenger ends champion whichever thread won the race
    assert store.get_alias("champion")[0] == {"version": "v0003", "overall": 8.0}


def test_cas_loses_no_update_where_a_blind_write_does(cfg):
    store = S3Store(cfg)

    def bump(cur):
        return {"n": (cur or {"n": 0})["n"] + 1}

    # control: read-modify-write without the condition loses one of two racing updates
    barrier = threading.Barrier(2)

    def blind():
        cur, _ = store.get_alias("blind")
        barrier.wait(timeout=30)
        body = json.dumps(bump(cur)).encode()
        store.client.put_object(Bucket=cfg.bucket, Key=store.key("aliases", "blind.json"), Body=body)  # no condition

    _run(blind, blind)
    assert store.get_alias("blind")[0] == {"n": 1}  # 2 increments, 1 survives

    wrap = _racing(threading.Barrier(4))

    def worker():
        mine = S3Store(cfg)
        for _ in range(3):  # each round, all four read the same value before any of them writes
            mine.update_alias("counter", wrap(bump))

    _run(*[worker] * 4)
    assert store.get_alias("counter")[0] == {"n": 12}


def test_dvc_remote_commands_name_the_endpoint_but_no_secret():
    cfg = S3Config(endpoint_url="http://127.0.0.1:9000", bucket="ml-artifacts", prefix="team/editthinker")
    assert dvc_remote_commands(cfg) == [
        ["dvc", "remote", "add", "--force", "-d", "store", "s3://ml-artifacts/team/editthinker/dvc"],
        ["dvc", "remote", "modify", "store", "endpointurl", "http://127.0.0.1:9000"],
        ["dvc", "remote", "modify", "store", "region", "us-east-1"],
    ]
    aws = dvc_remote_commands(S3Config(bucket="b-1", prefix="", region="eu-west-1"))
    assert aws[0][-1] == "s3://b-1/dvc" and not any("endpointurl" in c for c in aws)
    with pytest.raises(ValueError, match="bucket"):
        dvc_remote_commands(S3Config())


def test_a_retried_generation_shard_resumes_its_units_from_s3_on_a_fresh_disk(cfg, tmp_path, monkeypatch):
    """A KFP shard's disk does not outlive a failed attempt: its finished units are kept on S3, so the retry (a new
    folder here) generates only the units that were not finished, and writes the uninterrupted shard's bytes."""
    from editthinker.storage_s3 import S3UnitMirror

    params = parse_params({"generate": {"num_tasks": 12, "max_turns": 2, "shards": 2, "unit_tasks": 2}})
    reference = generate.run_shard(params, 0, tmp_path / "reference")  # no mirror: the uninterrupted shard
    units = len(generate.unit_ranges(generate.shard_tasks(params, 0), 2))
    assert units == 3
    original, calls = generate._unit_rows, []

    def crash_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("the pod died")
        return original(*args, **kwargs)

    mirror = S3UnitMirror(S3Store(cfg))
    monkeypatch.setattr(generate, "_unit_rows", crash_on_second)
    with pytest.raises(RuntimeError, match="pod died"):
        generate.run_shard(params, 0, tmp_path / "attempt-1" / "shard", mirror=mirror)

    calls.clear()
    monkeypatch.setattr(generate, "_unit_rows", lambda *a, **k: (calls.append(1), original(*a, **k))[1])
    retried = generate.run_shard(params, 0, tmp_path / "attempt-2" / "shard", mirror=mirror)
    assert len(calls) == units - 1  # the unit finished before the crash came back from S3
    assert retried["dataset_sha256"] == reference["dataset_sha256"]
    assert file_index(tmp_path / "attempt-2" / "shard") == file_index(tmp_path / "reference")  # the image store too
    assert S3UnitMirror.for_params(S3Config(bucket="")) is None  # no bucket: units stay on the local disk
