"""The registry commands and model cards on an S3 registry (moto's S3 server on loopback, tests/s3_server.py): the
same list / show / compare / promote / rollback / push as on a local registry (tests/test_registry_cli.py), with the
card a content-addressed artifact that the version's record names, and a download that carries it as README.md."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from editthinker import hub
from editthinker.lineage import hash_path
from editthinker.model_card import card_sha256
from editthinker.registry import S3Registry, open_registry
from editthinker.stages import promote
from s3_server import isolated_bucket, loopback_s3
from test_promote_s3 import all_objects
from test_registry_cli import FakeHfApi, check_pushed, cli, cli_json, flat, params, params_file, register, umask

KEY_ID = "AKIDREGISTRYCLI00042"
SECRET = "r3gistry-cli-s3cr3t-never-written-anywhere"


@pytest.fixture(scope="module")
def endpoint():
    with loopback_s3() as url:
        yield url


@pytest.fixture
def uri(endpoint, monkeypatch, tmp_path) -> str:
    bucket = isolated_bucket(endpoint, monkeypatch, tmp_path, KEY_ID, SECRET, "regcli")
    return f"s3://{bucket}/team/registry"


@pytest.fixture
def pf(tmp_path, uri, endpoint) -> Path:
    return params_file(tmp_path, {"promote": {"registry": uri}, "s3": {"endpoint_url": endpoint}})


def s3params(uri: str, endpoint: str, **kw):
    return params(uri, s3={"endpoint_url": endpoint}, **kw)


def s3reg(uri: str, endpoint: str) -> S3Registry:
    reg = open_registry(uri, s3params(uri, endpoint).s3)
    assert isinstance(reg, S3Registry)
    return reg


def test_card_is_an_artifact_the_record_names(tmp_path, uri, endpoint):
    p = s3params(uri, endpoint, lr=0.0042)
    register(tmp_path, p, "a", 5.0, uri)
    reg = s3reg(uri, endpoint)
    rec = reg.registered("v0001")
    card = reg.card("v0001")
    assert card is not None and rec["card_sha256"] == card_sha256(card) and "learning_rate: 0.0042" in card
    assert rec["params"]["rl"]["values"]["rl"]["learning_rate"] == 0.0042 and rec["git"] is not None
    keys = set(all_objects(reg))
    assert f"team/registry/artifacts/cards/{rec['card_sha256']}/_COMPLETE" in keys
    back = reg.download("v0001", tmp_path / "back")
    assert (back / "README.md").read_text() == card and hash_path(back) == hash_path(tmp_path / "a")


def test_commands_on_s3(tmp_path, uri, endpoint, pf, monkeypatch):
    register(tmp_path, s3params(uri, endpoint, lr=0.001), "a", 5.0, uri)
    register(tmp_path, s3params(uri, endpoint, lr=0.002), "b", 6.0, uri)
    register(tmp_path, s3params(uri, endpoint, lr=0.003), "c", 4.0, uri)
    rows = cli_json("registry", "list", "--params", str(pf))
    assert [(r["version"], r["champion"]) for r in rows] == [("v0001", False), ("v0002", True), ("v0003", False)]
    shown = cli_json("registry", "show", "champion", "--params", str(pf))
    assert shown["version"] == "v0002" and "EditThinker thinker" in shown["card"]
    cmp = cli_json("registry", "compare", "v0002", "v0003", "--params", str(pf))
    assert next(m for m in cmp["metrics"] if m["metric"] == "overall")["delta"] == -2.0
    assert [d["key"] for d in cmp["params"]] == ["rl: rl.learning_rate"]

    refused = cli("registry", "promote", "v0003", "--params", str(pf))
    assert refused.exit_code == 1 and "does not beat" in flat(refused.output)
    forced = cli_json("registry", "promote", "v0003", "--force", "--reason", "canary", "--params", str(pf))
    assert forced["forced"] and forced["previous_champion"] == "v0002"
    reg = s3reg(uri, endpoint)
    assert reg.champion() == "v0003" and reg.decisions()[-1]["reason"] == "canary"
    assert cli_json("registry", "rollback", "--params", str(pf))["champion"] == "v0002"
    assert cli_json("registry", "rollback", "--params", str(pf))["champion"] == "v0001"
    assert reg.champion() == "v0001" and [d.get("action") for d in reg.decisions()[-3:]] == [
        "promote",
        "rollback",
        "rollback",
    ]

    fake = FakeHfApi()
    monkeypatch.setattr(hub, "make_hf_api", lambda: fake)
    pushed = cli_json("registry", "push", "v0002", "--repo-id", "org/thinker", "--revision", "canary", "--private",
                      "--params", str(pf))  # fmt: skip
    assert pushed["version"] == "v0002"
    check_pushed(fake, reg.card("v0002"), b"b" * 8)  # the downloaded copy: weights, lineage, card


def test_rollback_loses_no_race_on_s3(tmp_path, uri, endpoint):
    """A rollback decided on a champion that changed before its compare-and-swap changes nothing."""
    p = s3params(uri, endpoint)
    register(tmp_path, p, "a", 5.0, uri)
    register(tmp_path, p, "b", 6.0, uri)
    reg = s3reg(uri, endpoint)
    original = reg.decisions

    def decisions_then_race():  # another writer makes v0001 champion right after the rollback read the log
        found = original()
        reg.store.update_alias("champion", lambda _: {"version": "v0001"})
        return found

    reg.decisions = decisions_then_race  # type: ignore[method-assign]
    with pytest.raises(promote.PromotionRefused, match="changed to v0001 while rolling back from v0002"):
        promote.rollback(reg, "race")
    reg.decisions = original  # type: ignore[method-assign]
    assert reg.champion() == "v0001" and not any(d.get("action") == "rollback" for d in reg.decisions())


def test_download_follows_the_umask(tmp_path, uri, endpoint):
    register(tmp_path, s3params(uri, endpoint), "a", 5.0, uri)
    with umask(0o002):
        back = s3reg(uri, endpoint).download("v0001", tmp_path / "back")
    for path in [back, *back.rglob("*")]:
        want = 0o775 if path.is_dir() else 0o664
        assert stat.S_IMODE(path.stat().st_mode) == want, path
