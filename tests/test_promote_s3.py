"""Promotion with the registry on S3 (`promote.registry: s3://bucket/prefix`), against moto's S3 server on
loopback (tests/s3_server.py; it applies conditional writes atomically, as S3 does).

The same rule as the local registry (tests/test_promote.py); what is new here: versions are content-addressed
S3 artifacts, version numbers, the champion alias and the decision log change only by compare-and-swap, so
concurrent promotions on several "hosts" (threads, each with its own boto3 client) lose nothing.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from editthinker.config import Params, parse_params
from editthinker.lineage import hash_path
from editthinker.registry import Registry, S3Registry, open_registry, parse_s3_uri
from editthinker.stages import promote
from s3_server import isolated_bucket, loopback_s3
from test_promote import make_checkpoint, make_eval

KEY_ID = "AKIDPROMOTES3KEY0077"
SECRET = "pr0mote-s3cr3t-Q7w-never-written-anywhere"


@pytest.fixture(scope="module")
def endpoint():
    with loopback_s3() as url:
        yield url


@pytest.fixture
def uri(endpoint, monkeypatch, tmp_path) -> str:
    bucket = isolated_bucket(endpoint, monkeypatch, tmp_path, KEY_ID, SECRET, "reg")
    return f"s3://{bucket}/team/registry"


@pytest.fixture
def p(endpoint) -> Params:
    return parse_params({"promote": {"margin": 0.0}, "s3": {"endpoint_url": endpoint, "region": "us-east-1"}})


def s3reg(uri: str, p: Params) -> S3Registry:
    reg = open_registry(uri, p.s3)
    assert isinstance(reg, S3Registry)
    return reg


def all_objects(reg: S3Registry) -> dict[str, bytes]:
    c, b = reg.store.client, reg.store.cfg.bucket
    pages = c.get_paginator("list_objects_v2").paginate(Bucket=b)
    return {
        o["Key"]: c.get_object(Bucket=b, Key=o["Key"])["Body"].read() for pg in pages for o in pg.get("Contents", [])
    }


def test_uri_switch(tmp_path):
    assert parse_s3_uri("s3://bkt/a/b/") == ("bkt", "a/b")
    assert parse_s3_uri(Path("s3://bkt/a")) == ("bkt", "a")  # pathlib folds "//": still S3
    assert parse_s3_uri("s3://bkt") == ("bkt", "")
    assert parse_s3_uri(tmp_path / "registry") is None and parse_s3_uri("registry") is None
    assert isinstance(open_registry(tmp_path / "registry"), Registry)


def test_first_checkpoint_becomes_champion(tmp_path, uri, p):
    ckpt = make_checkpoint(tmp_path, "a", b"aaaa")
    d = promote.run(p, ckpt, make_eval(tmp_path, "ea", 5.0, of=ckpt), uri)
    assert d["version"] == "v0001" and d["promoted"] and d["registered_new"] and d["champion"] == "v0001"
    reg = s3reg(uri, p)
    assert reg.champion() == "v0001" and reg.versions() == ["v0001"]
    # the version is the checkpoint, uploaded whole; its lineage is the checkpoint's plus `registered`
    back = reg.download("champion", tmp_path / "back")
    assert hash_path(back) == hash_path(ckpt) and (back / "model.bin").read_bytes() == b"aaaa"
    lin = reg.lineage("v0001")
    assert lin["stage"] == "rl" and lin["registered"]["metrics"]["overall"] == 5.0
    assert lin["registered"]["checkpoint_sha256"] == hash_path(ckpt) and lin["registered"]["version"] == "v0001"
    assert [x["version"] for x in reg.decisions()] == ["v0001"]
    keys = set(all_objects(reg))
    bucket_prefix = "team/registry/"
    assert all(k.startswith(bucket_prefix) for k in keys)
    assert {bucket_prefix + f"aliases/{a}.json" for a in ("champion", "index", "decisions")} <= keys
    assert bucket_prefix + f"artifacts/checkpoints/{hash_path(ckpt)}/_COMPLETE" in keys


def test_worse_challenger_registered_not_promoted(tmp_path, uri, p):
    promote.run(p, make_checkpoint(tmp_path, "a", b"a"), make_eval(tmp_path, "ea", 6.0, of=tmp_path / "a"), uri)
    d = promote.run(p, make_checkpoint(tmp_path, "b", b"b"), make_eval(tmp_path, "eb", 5.0, of=tmp_path / "b"), uri)
    assert d["version"] == "v0002" and d["registered_new"] and not d["promoted"]
    assert d["champion"] == "v0001" and d["champion_metric"] == 6.0 and d["challenger_metric"] == 5.0
    reg = s3reg(uri, p)
    assert reg.versions() == ["v0001", "v0002"] and reg.champion() == "v0001"
    assert [x["promoted"] for x in reg.decisions()] == [True, False]
    # the gate reads the S3 registry through the same rule
    gate = promote.challenge(
        p, make_checkpoint(tmp_path, "c", b"c"), make_eval(tmp_path, "ec", 7.0, of=tmp_path / "c"), uri
    )
    assert gate["beats_champion"] and gate["champion"] == "v0001" and gate["champion_metric"] == 6.0
    d = promote.run(p, tmp_path / "c", tmp_path / "ec", uri)
    assert d["promoted"] and d["previous_champion"] == "v0001" and reg.champion() == "v0003"


def test_same_checkpoint_twice_is_a_noop(tmp_path, uri, p):
    first = promote.run(
        p, make_checkpoint(tmp_path, "a", b"aaaa"), make_eval(tmp_path, "ea", 5.0, of=tmp_path / "a"), uri
    )
    reg = s3reg(uri, p)
    before = {k: v for k, v in all_objects(reg).items() if "/artifacts/" in k}
    again = make_checkpoint(tmp_path, "a-copy", b"aaaa")  # the same content under another name
    second = promote.run(p, again, make_eval(tmp_path, "eb", 5.0, of=again), uri)
    assert second["version"] == first["version"] == "v0001"
    assert not second["registered_new"] and not second["promoted"] and second["champion"] == "v0001"
    assert "already the champion" in second["reason"]
    assert reg.versions() == ["v0001"] and reg.champion() == "v0001"
    assert {k: v for k, v in all_objects(reg).items() if "/artifacts/" in k} == before  # nothing uploaded
    gate = promote.challenge(p, again, tmp_path / "eb", uri)
    assert not gate["beats_champion"] and "already the champion" in gate["reason"]


def _race(p: Params, uri: str, jobs: list[tuple[Path, Path]]) -> list[dict]:
    results: list[dict] = []
    errors: list[BaseException] = []
    start = threading.Barrier(len(jobs))

    def go(ckpt: Path, ev: Path) -> None:
        try:
            start.wait()
            results.append(promote.run(p, ckpt, ev, uri))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=go, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


def test_concurrent_promotions_one_champion_every_version_once(tmp_path, uri, p):
    n = 6
    ckpts = [make_checkpoint(tmp_path, f"c{i}", bytes([i]) * 100) for i in range(n)]
    evals = [  # the best is not the last; every one beats the editor alone (at -1), so the first judged wins
        make_eval(tmp_path, f"e{i}", float((i * 7) % n), of=ckpts[i], editor_overall=-1.0) for i in range(n)
    ]
    results = _race(p, uri, list(zip(ckpts, evals, strict=True)))
    reg = s3reg(uri, p)
    assert reg.versions() == [f"v{i:04d}" for i in range(1, n + 1)]
    assert sorted(r["version"] for r in results) == reg.versions()  # each got its own number
    assert all(r["registered_new"] for r in results)
    shas = sorted(reg.registered(v)["checkpoint_sha256"] for v in reg.versions())
    assert shas == sorted(hash_path(c) for c in ckpts)  # every checkpoint registered exactly once
    markers = [k for k in all_objects(reg) if k.endswith("/_COMPLETE")]
    assert len([k for k in markers if "/artifacts/checkpoints/" in k]) == n
    assert len([k for k in markers if "/artifacts/cards/" in k]) == n  # one model card each
    best = max(range(n), key=lambda i: (i * 7) % n)
    assert reg.registered("champion")["checkpoint_sha256"] == hash_path(ckpts[best])
    assert len(reg.decisions()) == n  # no decision lost
    # a promotion that won must have been judged against the champion it replaced
    winners = [r for r in results if r["promoted"]]
    assert winners and all(r["champion"] == r["version"] for r in winners)
    assert sum(1 for r in results if r["previous_champion"] is None) == 1


def test_concurrent_promotions_of_one_checkpoint_share_a_version(tmp_path, uri, p):
    ckpts = [make_checkpoint(tmp_path, f"c{i}", bytes([i % 2]) * 50) for i in range(4)]
    evals = [make_eval(tmp_path, f"e{i}", float(i % 2), of=ckpts[i]) for i in range(4)]
    results = _race(p, uri, list(zip(ckpts, evals, strict=True)))
    reg = s3reg(uri, p)
    assert reg.versions() == ["v0001", "v0002"]
    assert sum(r["registered_new"] for r in results) == 2
    assert reg.registered("champion")["checkpoint_sha256"] == hash_path(ckpts[1])
    assert len(reg.decisions()) == 4


def test_credentials_are_in_no_written_object(tmp_path, uri, p):
    promote.run(p, make_checkpoint(tmp_path, "a", b"a"), make_eval(tmp_path, "ea", 5.0, of=tmp_path / "a"), uri)
    promote.run(p, make_checkpoint(tmp_path, "b", b"b"), make_eval(tmp_path, "eb", 6.0, of=tmp_path / "b"), uri)
    reg = s3reg(uri, p)
    reg.download("champion", tmp_path / "dl")
    blobs = list(all_objects(reg).values())
    blobs += [f.read_bytes() for f in tmp_path.rglob("*") if f.is_file()]
    assert len(blobs) > 10
    for blob in blobs:
        assert KEY_ID.encode() not in blob and SECRET.encode() not in blob
