"""The S3 registry on a store that ignores conditional writes (IfMatch / IfNoneMatch): the probe detects it and the
registry refuses to write, unless a lock is configured to stand in for them.

Two such stores: moto (tests/s3_server.py) behind a client that drops the conditions, and s3rver itself
(tests/s3rver_server.py; skipped with the reason where node, npm or the package is unavailable). Every check is
sequential or serialised by the registry's lock, so no outcome depends on thread timing.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from editthinker import storage_s3
from editthinker.config import Params, S3Config, parse_params
from editthinker.lineage import hash_path
from editthinker.registry import LOCK_ENV, ConditionalWritesIgnored, S3Registry, open_registry
from editthinker.stages import promote
from editthinker.storage_s3 import S3Store
from s3_server import isolated_bucket, loopback_s3
from s3rver_server import ACCESS_KEY, SECRET_KEY, s3rver_endpoint
from test_promote import make_checkpoint, make_eval
from test_promote_s3 import _race

KEY_ID = "AKIDCONDITIONALPROBE1"
SECRET = "c0nditional-pr0be-s3cr3t"
PREFIX = "team/registry"


class IgnoresConditions:
    """A boto3 S3 client whose PutObject drops IfMatch / IfNoneMatch before sending, as s3rver ignores them."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def put_object(self, **kwargs: Any) -> Any:
        kwargs.pop("IfMatch", None)
        kwargs.pop("IfNoneMatch", None)
        return self._client.put_object(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


@pytest.fixture(scope="module")
def endpoint():
    with loopback_s3() as url:
        yield url


@pytest.fixture
def bucket(endpoint, monkeypatch, tmp_path) -> str:
    monkeypatch.delenv(LOCK_ENV, raising=False)
    return isolated_bucket(endpoint, monkeypatch, tmp_path, KEY_ID, SECRET, "cond")


def s3_params(endpoint: str) -> Params:
    return parse_params({"promote": {"margin": 0.0}, "s3": {"endpoint_url": endpoint, "region": "us-east-1"}})


@pytest.fixture
def ignoring(monkeypatch) -> None:
    """Every S3Store made from now on talks through IgnoresConditions."""
    real = storage_s3.make_client
    monkeypatch.setattr(storage_s3, "make_client", lambda cfg: IgnoresConditions(real(cfg)))


def keys(endpoint: str, bucket: str) -> list[str]:
    store = S3Store(S3Config(endpoint_url=endpoint, bucket=bucket))
    return [o["Key"] for o in store.client.list_objects_v2(Bucket=bucket).get("Contents", [])]


def new_job(tmp_path: Path, name: str, overall: float) -> tuple[Path, Path]:
    ckpt = make_checkpoint(tmp_path, name, name.encode() * 20)
    return ckpt, make_eval(tmp_path, f"e-{name}", overall, of=ckpt)


# --- moto, honouring and not ----------------------------------------------------------------------------------
def test_probe_tells_the_two_stores_apart(endpoint, bucket):
    cfg = S3Config(endpoint_url=endpoint, bucket=bucket, prefix=PREFIX)
    assert S3Store(cfg).probe_conditional_writes().honoured
    ignored = S3Store(cfg, client=IgnoresConditions(storage_s3.make_client(cfg))).probe_conditional_writes()
    assert not ignored.honoured and "IfNoneMatch='*' over an existing object was accepted" in ignored.detail
    assert keys(endpoint, bucket) == []  # the probe objects are gone


def test_registry_refuses_a_store_that_ignores_conditional_writes(tmp_path, endpoint, bucket, ignoring):
    ckpt, ev = new_job(tmp_path, "a", 5.0)
    uri = f"s3://{bucket}/{PREFIX}"
    with pytest.raises(ConditionalWritesIgnored, match=r"does not honour conditional writes .*refusing to write"):
        promote.run(s3_params(endpoint), ckpt, ev, uri)
    assert keys(endpoint, bucket) == []  # nothing uploaded, no version, no decision
    reg = open_registry(uri, s3_params(endpoint).s3)
    assert isinstance(reg, S3Registry)
    with pytest.raises(ConditionalWritesIgnored):
        reg.log_decision({"version": "v0001"})  # every write method checks, not only transaction()


def test_a_lock_stands_in_for_conditional_writes(tmp_path, endpoint, bucket, ignoring, monkeypatch):
    monkeypatch.setenv(LOCK_ENV, str(tmp_path / "registry.lock"))
    p, uri, n = s3_params(endpoint), f"s3://{bucket}/{PREFIX}", 5
    jobs = [new_job(tmp_path, f"c{i}", float((i * 3) % n)) for i in range(n)]
    results = _race(p, uri, jobs)  # five writers at once: the lock serialises them
    reg = open_registry(uri, p.s3)
    assert isinstance(reg, S3Registry) and not reg.conditional_writes_honoured()
    assert reg.versions() == [f"v{i:04d}" for i in range(1, n + 1)]
    assert sorted(r["version"] for r in results) == reg.versions()
    assert len(reg.decisions()) == n
    best = max(range(n), key=lambda i: (i * 3) % n)
    assert reg.registered("champion")["checkpoint_sha256"] == hash_path(jobs[best][0])


def test_corrupt_alias_names_its_object(endpoint, bucket):
    store = S3Store(S3Config(endpoint_url=endpoint, bucket=bucket, prefix=PREFIX))
    store.client.put_object(Bucket=bucket, Key=f"{PREFIX}/aliases/champion.json", Body=b'{"version": "v00')
    reg = open_registry(f"s3://{bucket}/{PREFIX}", s3_params(endpoint).s3)
    where = re.escape(f"s3://{bucket}/{PREFIX}/aliases/champion.json: not valid JSON")
    with pytest.raises(ValueError, match=where):
        reg.champion()


def test_version_removed_from_the_index_keeps_its_number(tmp_path, endpoint, bucket):
    p, uri = s3_params(endpoint), f"s3://{bucket}/{PREFIX}"
    promote.run(p, *new_job(tmp_path, "a", 5.0), uri)
    promote.run(p, *new_job(tmp_path, "b", 4.0), uri)
    reg = open_registry(uri, p.s3)
    assert isinstance(reg, S3Registry)
    reg.store.update_alias("index", lambda cur: {**(cur or {}), "versions": {"v0001": cur["versions"]["v0001"]}})
    assert promote.run(p, *new_job(tmp_path, "c", 3.0), uri)["version"] == "v0003"


# --- s3rver (npm) ---------------------------------------------------------------------------------------------
@pytest.fixture
def s3rver_bucket(tmp_path, monkeypatch):
    monkeypatch.delenv(LOCK_ENV, raising=False)
    with s3rver_endpoint(tmp_path / "s3rver-data") as url:
        yield url, isolated_bucket(url, monkeypatch, tmp_path, ACCESS_KEY, SECRET_KEY, "reg")


def test_s3rver_would_lose_an_update_so_the_registry_refuses(tmp_path, s3rver_bucket):
    url, bucket = s3rver_bucket
    demo = S3Store(S3Config(endpoint_url=url, bucket=bucket, prefix="demo"))
    first = demo.cas_alias("counter", {"n": 1}, None)
    assert first is not None and demo.cas_alias("counter", {"n": 2}, first) is not None
    # a writer that read n=1 writes with the stale ETag: S3 refuses it (412); s3rver overwrites n=2
    assert demo.cas_alias("counter", {"n": 3}, first) is not None
    assert demo.get_alias("counter")[0] == {"n": 3}  # the update n=2 is lost
    assert not S3Store(S3Config(endpoint_url=url, bucket=bucket, prefix=PREFIX)).probe_conditional_writes().honoured

    ckpt, ev = new_job(tmp_path, "a", 5.0)
    with pytest.raises(ConditionalWritesIgnored, match=r"does not honour conditional writes"):
        promote.run(s3_params(url), ckpt, ev, f"s3://{bucket}/{PREFIX}")
    assert [k for k in keys(url, bucket) if not k.startswith("demo/")] == []  # the registry wrote nothing


def test_s3rver_with_a_lock(tmp_path, s3rver_bucket, monkeypatch):
    url, bucket = s3rver_bucket
    monkeypatch.setenv(LOCK_ENV, str(tmp_path / "registry.lock"))
    p, uri = s3_params(url), f"s3://{bucket}/{PREFIX}"
    first = promote.run(p, *new_job(tmp_path, "a", 5.0), uri)
    second = promote.run(p, *new_job(tmp_path, "b", 6.0), uri)
    assert (first["version"], second["version"]) == ("v0001", "v0002") and second["promoted"]
    reg = open_registry(uri, p.s3)
    assert isinstance(reg, S3Registry)
    assert reg.champion() == "v0002" and [d["version"] for d in reg.decisions()] == ["v0001", "v0002"]
