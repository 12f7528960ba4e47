"""The registry's traceability and commands, on a local registry: params values and the git commit recorded with a
version, its model card, `editthinker registry list | show | compare | promote | rollback | push`, and files made
with the process umask.

Checkpoints are built by hand (a few bytes of "weights") with lineages from the real lineage.make_lineage, so the
params values, input hashes and sizes are the ones the stages would write.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from editthinker import hub
from editthinker.cli import app
from editthinker.config import Params, parse_params
from editthinker.lineage import hash_path, make_lineage
from editthinker.model_card import card_sha256, git_state, render_card, stage_params
from editthinker.registry import Registry, RegistryError
from editthinker.stages import promote, sections_of
from editthinker.storage import atomic_dir, dataset_hash, sha256_file, write_json
from eval_summaries import summary


# --- building checkpoints and evaluations with real lineages ----------------------------------------------------
def make_dataset(root: Path, name: str, rows: int) -> Path:
    """A dataset folder as records.write_dataset leaves it: shards plus a manifest with rows and sha256."""
    d = root / name
    d.mkdir(parents=True)
    (d / "part-00000.parquet").write_bytes(name.encode() + b"x" * (10 * rows - len(name)))
    files = {"part-00000.parquet": sha256_file(d / "part-00000.parquet")}  # what reads verify
    (d / "manifest.json").write_text(json.dumps({"rows": rows, "files": files, "dataset_sha256": dataset_hash(files)}))
    return d


def make_checkpoint(root: Path, name: str, weights: bytes, p: Params, rows: int = 7) -> Path:
    """An rl checkpoint whose lineage.json is make_lineage's, for params `p`."""
    data = make_dataset(root, f"{name}-data", rows)
    sft = root / f"{name}-sft"
    sft.mkdir()
    (sft / "model.safetensors").write_bytes(b"sft" + weights)
    ckpt = root / name
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(weights)
    (ckpt / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    inputs = {"rl_data": data, "sft_checkpoint": sft}
    lineage = make_lineage("rl", p, sections_of("rl"), inputs, {"thinker": f"tiny-qwen2.5-vl@{name}"})
    (ckpt / "lineage.json").write_text(json.dumps(lineage))
    return ckpt


def make_eval(root: Path, name: str, overall: float, of: Path, p: Params) -> Path:
    """An eval summary of checkpoint `of` in the evaluate stage's shape, with its real lineage."""
    d = root / name
    d.mkdir(parents=True)
    metrics = {"n": 4, "success_rate": 0.5, "semantic": overall + 0.5, "quality": 7.0, "overall": overall,
               "turns": 2.0, "format_failures": 0, "success_ci95": [0.1, 0.9]}  # fmt: skip
    systems = {"editor": {"synthetic": {**metrics, "overall": overall - 1}}, "editor+rl": {"synthetic": metrics}}
    lineage = make_lineage("evaluate", p, sections_of("evaluate"), {"rl_checkpoint": of, "sft_checkpoint": of}, {})
    doc = summary(overall, lineage, systems=systems, editor_overall=overall - 1)
    doc["challenger"]["quality"] = metrics["quality"]
    (d / "summary.json").write_text(json.dumps(doc))
    return d


def params(registry: Path | str, margin: float = 0.0, lr: float = 0.0005, **extra: Any) -> Params:
    return parse_params(
        {"promote": {"registry": str(registry), "margin": margin}, "rl": {"learning_rate": lr}, **extra}
    )


def register(tmp_path: Path, p: Params, name: str, overall: float, registry: str | Path) -> dict[str, Any]:
    ckpt = make_checkpoint(tmp_path, name, name.encode() * 8, p)
    return promote.run(p, ckpt, make_eval(tmp_path, f"eval-{name}", overall, ckpt, p), registry)


def params_file(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "250"})


def flat(text: str) -> str:
    """Output with rich's line wrapping undone (the error console's width is fixed when it is made)."""
    return " ".join(text.split())


def cli_json(*args: str) -> Any:
    result = cli(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture
def reg(tmp_path: Path) -> Path:
    return tmp_path / "registry"


# --- lineage: params values and sizes -----------------------------------------------------------------------------
def test_lineage_carries_the_params_values_its_hash_covers(tmp_path: Path) -> None:
    p = params(tmp_path / "r", lr=0.123)
    ckpt = make_checkpoint(tmp_path, "a", b"weights", p, rows=11)
    lin = json.loads((ckpt / "lineage.json").read_text())
    assert sorted(lin["params"]) == sorted(sections_of("rl"))
    assert lin["params"]["rl"]["learning_rate"] == 0.123
    assert stage_params(lin)["values"] == lin["params"] and stage_params(lin)["source"] == "lineage"
    assert lin["input_sizes"]["rl_data"] == {"rows": 11, "bytes": 110}
    assert lin["input_sizes"]["sft_checkpoint"] == {"files": 1, "bytes": len(b"sftweights")}


def test_params_values_are_only_trusted_when_they_hash_to_the_lineage(tmp_path: Path) -> None:
    p = params(tmp_path / "r", lr=0.25)
    lin = json.loads((make_checkpoint(tmp_path, "a", b"w", p) / "lineage.json").read_text())
    lin["params"]["rl"]["learning_rate"] = 9.0  # edited after the fact
    assert stage_params(lin)["values"] is None and "do not match" in stage_params(lin)["source"]
    old = {k: v for k, v in lin.items() if k != "params"}  # a lineage from before params values
    assert stage_params(old)["values"] is None
    same = stage_params(old, p)  # the params given have the lineage's very hash: they are its values
    assert same["source"] == "params (same sha256)" and same["values"]["rl"]["learning_rate"] == 0.25
    assert stage_params(old, params(tmp_path / "r", lr=0.5))["values"] is None  # other params: not trusted


# --- git --------------------------------------------------------------------------------------------------------
def _git(repo: Path, *args: str) -> str:
    cmd = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def test_git_state_inside_outside_and_without_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    pkg = repo / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("x = 1\n")
    _git(repo, "init", "-q")
    assert git_state(pkg) is None  # a work tree with no commit yet
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "one")
    assert git_state(pkg) == {"commit": _git(repo, "rev-parse", "HEAD"), "dirty": False}
    (pkg / "__init__.py").write_text("x = 2\n")
    assert git_state(pkg) == {"commit": _git(repo, "rev-parse", "HEAD"), "dirty": True}
    (repo / "untracked.txt").write_text("scratch")  # untracked files do not make it dirty
    (pkg / "__init__.py").write_text("x = 1\n")
    assert git_state(pkg)["dirty"] is False  # type: ignore[index]
    installed = repo / "site" / "pkg"  # a copy of the package the repo does not track (an installed one)
    installed.mkdir(parents=True)
    (installed / "__init__.py").write_text("x = 1\n")
    assert git_state(installed) is None
    outside = tmp_path / "plain"
    outside.mkdir()
    (outside / "__init__.py").write_text("")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # do not find a repo above tmp_path
    assert git_state(outside) is None
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))  # no git binary at all
    assert git_state(pkg) is None


# --- what a registered version records, and its card ------------------------------------------------------------
def test_version_records_params_values_git_commit_and_a_card(tmp_path: Path, reg: Path) -> None:
    p = params(reg, lr=0.0042)
    d = register(tmp_path, p, "a", 5.0, reg)
    r = Registry(reg)
    rec = r.registered(d["version"])
    assert rec["params"]["rl"]["values"]["rl"]["learning_rate"] == 0.0042
    assert rec["params"]["rl"]["sha256"] == p.section_hash(*sections_of("rl"))
    assert rec["params"]["evaluate"]["values"]["evaluate"] == p.model_dump(mode="json")["evaluate"]
    assert rec["git"] == git_state() and rec["git"] is not None  # the tests run from a git work tree
    assert rec["training_code_matches"] is True  # this tree's rl code made the lineage
    assert rec["lineage"]["input_sizes"]["rl_data"]["rows"] == 7
    assert rec["registered_at"].endswith("+00:00")

    card = r.card("v0001")
    assert card is not None and (r.path("v0001") / "README.md").read_text() == card
    assert rec["card_sha256"] == card_sha256(card)
    assert hash_path(r.path("v0001")) == hash_path(tmp_path / "a")  # the card leaves the content hash alone
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["library_name"] == "transformers" and front["pipeline_tag"] == "image-text-to-text"
    assert "editthinker" in front["tags"] and "base_model" not in front  # a tiny thinker has no hub base model
    lin = json.loads((tmp_path / "a" / "lineage.json").read_text())
    assert lin["inputs"]["rl_data"] in card and "7 rows" in card  # data lineage: hash and size
    assert rec["git"]["commit"] in card and lin["code_version"] in card
    assert "learning_rate: 0.0042" in card  # params values
    assert "| editor+rl | synthetic | 0.5 | 5.5 | 7 | 5 | 2 | 0 | 4 |" in card  # the eval table
    assert "AutoModelForImageTextToText" in card and "VLMThinker" in card


def test_card_names_a_hub_base_model_when_the_params_do() -> None:
    registered = {"params": {"rl": {"values": {"thinker": {"base_model": "Qwen/Qwen2.5-VL-3B-Instruct"}}}}}
    card = render_card({"stage": "rl"}, registered, {})
    assert yaml.safe_load(card.split("---\n")[1])["base_model"] == "Qwen/Qwen2.5-VL-3B-Instruct"


def test_a_changed_card_is_detected(tmp_path: Path, reg: Path) -> None:
    register(tmp_path, params(reg), "a", 5.0, reg)
    card = Registry(reg).path("v0001") / "README.md"
    card.write_text(card.read_text().replace("transformers", "pytorch"))
    with pytest.raises(RegistryError, match=r"README\.md: the model card's sha256 is \w+, but version v0001"):
        Registry(reg).card("v0001")


# --- the commands -----------------------------------------------------------------------------------------------
def test_list_show_compare(tmp_path: Path, reg: Path) -> None:
    register(tmp_path, params(reg, lr=0.001), "a", 5.0, reg)
    register(tmp_path, params(reg, lr=0.002), "b", 4.0, reg)  # worse: registered, not champion
    pf = params_file(tmp_path, {"promote": {"registry": str(reg)}})
    rows = cli_json("registry", "list", "--params", str(pf))
    assert [(r["version"], r["champion"]) for r in rows] == [("v0001", True), ("v0002", False)]
    assert rows[1]["metrics"]["overall"] == 4.0 and rows[0]["git_commit"] == git_state()["commit"]  # type: ignore[index]
    table = cli("registry", "list", "--params", str(pf))
    assert table.exit_code == 0 and "overall" in table.stdout
    line = next(x for x in table.stdout.splitlines() if "v0001" in x).split("│")
    assert line[1].strip() == "*" and "5" in [c.strip() for c in line] and "4" not in [c.strip() for c in line]

    shown = cli_json("registry", "show", "champion", "--params", str(pf))
    assert shown["version"] == "v0001" and shown["champion"] and shown["card"] == Registry(reg).card("v0001")
    assert [d["promoted"] for d in shown["decisions"]] == [True]
    text = cli("registry", "show", "v0002", "--params", str(pf))
    assert text.exit_code == 0 and "EditThinker thinker" in text.stdout and "How to load" in text.stdout

    cmp = cli_json("registry", "compare", "v0001", "v0002", "--params", str(pf))
    overall = next(m for m in cmp["metrics"] if m["metric"] == "overall")
    assert overall == {"metric": "overall", "a": 5.0, "b": 4.0, "delta": -1.0}
    assert cmp["same_benchmark"] is True
    assert {"key": "rl: rl.learning_rate", "a": 0.001, "b": 0.002, "only_in": None} in cmp["params"]
    assert all("learning_rate" in d["key"] for d in cmp["params"])  # nothing else differs
    text = cli("registry", "compare", "v0001", "v0002", "--params", str(pf))
    assert text.exit_code == 0 and "-1" in text.stdout and "rl.learning_rate" in text.stdout

    missing = cli("registry", "show", "v0009", "--params", str(pf))
    assert missing.exit_code == 1 and "no version or alias 'v0009'" in flat(missing.output)


def test_registry_option_overrides_params(tmp_path: Path, reg: Path) -> None:
    register(tmp_path, params(reg), "a", 5.0, reg)
    pf = params_file(tmp_path, {"promote": {"registry": str(tmp_path / "elsewhere")}})
    assert cli_json("registry", "list", "--params", str(pf)) == []
    assert len(cli_json("registry", "list", "--params", str(pf), "--registry", str(reg))) == 1


def test_manual_promotion_follows_the_rule_unless_forced(tmp_path: Path, reg: Path) -> None:
    p = params(reg, margin=0.5)
    register(tmp_path, p, "a", 5.0, reg)
    register(tmp_path, p, "b", 4.0, reg)
    register(tmp_path, p, "c", 5.6, reg)  # beats a by 0.6 > margin, but registered... and promoted by run
    r = Registry(reg)
    assert r.champion() == "v0003"
    pf = params_file(tmp_path, {"promote": {"registry": str(reg), "margin": 0.5}})
    refused = cli("registry", "promote", "v0002", "--params", str(pf))
    assert refused.exit_code == 1 and "does not beat" in flat(refused.output) and "--force" in refused.output
    assert r.champion() == "v0003" and len(r.decisions()) == 3  # nothing changed, nothing logged
    same = cli_json("registry", "promote", "v0003", "--params", str(pf))
    assert same["promoted"] is False and "already the champion" in same["reason"]
    forced = cli_json("registry", "promote", "v0002", "--force", "--reason", "canary", "--params", str(pf))
    assert forced["forced"] is True and forced["previous_champion"] == "v0003" and forced["reason"] == "canary"
    assert r.champion() == "v0002"
    last = r.decisions()[-1]
    assert (
        last["action"] == "promote"
        and last["forced"]
        and last["reason"] == "canary"
        and "does not beat" in last["rule"]
    )
    assert last["time"] and last["checkpoint_sha256"] == r.registered("v0002")["checkpoint_sha256"]
    won = cli_json("registry", "promote", "v0003", "--params", str(pf))  # 5.6 beats 4.0 by more than 0.5
    assert won["forced"] is False and r.champion() == "v0003"


def test_manual_promotion_refuses_another_benchmark(tmp_path: Path, reg: Path) -> None:
    register(tmp_path, params(reg), "a", 5.0, reg)
    register(tmp_path, params(reg, evaluate={"num_tasks": 7}), "b", 9.0, reg)  # other benchmark: not promoted
    with pytest.raises(promote.PromotionRefused, match="another benchmark"):
        promote.promote_version(params(reg), Registry(reg), "v0002", "better?")
    assert Registry(reg).champion() == "v0001"


def test_rollback_walks_back_the_champions(tmp_path: Path, reg: Path) -> None:
    p = params(reg)
    for i, name in enumerate("abc"):
        register(tmp_path, p, name, 5.0 + i, reg)  # each beats the last: a, b, c champions in turn
    register(tmp_path, p, "d", 1.0, reg)  # never champion
    r = Registry(reg)
    pf = params_file(tmp_path, {"promote": {"registry": str(reg)}})
    assert promote.champion_history(r.decisions()) == ["v0001", "v0002", "v0003"]
    back = cli_json("registry", "rollback", "--reason", "bad canary", "--params", str(pf))
    assert back["champion"] == "v0002" and back["previous_champion"] == "v0003" and r.champion() == "v0002"
    assert r.decisions()[-1]["action"] == "rollback" and r.decisions()[-1]["reason"] == "bad canary"
    assert cli_json("registry", "rollback", "--params", str(pf))["champion"] == "v0001"  # two back, not a toggle
    refused = cli("registry", "rollback", "--params", str(pf))
    assert refused.exit_code == 1 and "first champion" in flat(refused.output) and r.champion() == "v0001"
    # a manual promotion is undone by the next rollback
    promote.promote_version(p, r, "v0004", "try it", force=True)
    assert promote.rollback(r, "no")["champion"] == "v0001" and r.champion() == "v0001"


def test_rollback_refuses_when_the_log_does_not_explain_the_champion(tmp_path: Path, reg: Path) -> None:
    register(tmp_path, params(reg), "a", 5.0, reg)
    register(tmp_path, params(reg), "b", 6.0, reg)
    r = Registry(reg)
    with r.locked():
        r.set_alias("champion", "v0001")  # set by hand, no decision
    with pytest.raises(promote.PromotionRefused, match="decision log's last champion is v0002"):
        promote.rollback(r, "why")
    assert r.champion() == "v0001"


# --- push to a hub (a fake HfApi; never the network) -------------------------------------------------------------
class FakeHfApi:
    """Records what a push asks of HfApi; reads the folder while it exists (an S3 version's is temporary)."""

    endpoint = "http://hub.invalid"

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.uploaded: dict[str, bytes] = {}

    def create_repo(self, repo_id: str, **kw: Any) -> str:
        self.calls.append(("create_repo", {"repo_id": repo_id, **kw}))
        return f"{self.endpoint}/{repo_id}"

    def create_branch(self, repo_id: str, **kw: Any) -> None:
        self.calls.append(("create_branch", {"repo_id": repo_id, **kw}))

    def upload_folder(self, **kw: Any) -> Any:
        self.calls.append(("upload_folder", kw))
        folder = Path(kw["folder_path"])
        self.uploaded = {f.relative_to(folder).as_posix(): f.read_bytes() for f in folder.rglob("*") if f.is_file()}

        class Commit:
            oid = "c0ffee"

        return Commit()


def check_pushed(fake: FakeHfApi, card: str | None, weights: bytes) -> None:
    names = [name for name, _ in fake.calls]
    assert names == ["create_repo", "create_branch", "upload_folder"]
    assert fake.calls[0][1] == {"repo_id": "org/thinker", "private": True, "repo_type": "model", "exist_ok": True}
    assert fake.calls[1][1]["branch"] == "canary"
    up = fake.calls[2][1]
    assert up["repo_id"] == "org/thinker" and up["revision"] == "canary" and "v0002" in up["commit_message"]
    assert fake.uploaded["README.md"].decode() == card
    assert fake.uploaded["model.safetensors"] == weights
    assert json.loads(fake.uploaded["lineage.json"])["registered"]["version"] == "v0002"


def test_push_uploads_checkpoint_and_card(tmp_path: Path, reg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    register(tmp_path, params(reg), "a", 5.0, reg)
    register(tmp_path, params(reg), "b", 6.0, reg)
    fake = FakeHfApi()
    monkeypatch.setattr(hub, "make_hf_api", lambda: fake)
    pf = params_file(tmp_path, {"promote": {"registry": str(reg)}})
    out = cli_json("registry", "push", "champion", "--repo-id", "org/thinker", "--revision", "canary", "--private",
                   "--params", str(pf))  # fmt: skip
    assert out["version"] == "v0002" and out["commit"] == "c0ffee" and "README.md" in out["files"]
    check_pushed(fake, Registry(reg).card("v0002"), b"b" * 8)
    bad = cli("registry", "push", "v0001", "--repo-id", "not-a-repo-id", "--params", str(pf))
    assert bad.exit_code == 1 and "expected ORG/NAME" in flat(bad.output)


def test_push_needs_hf_token_from_the_environment(tmp_path: Path, reg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    register(tmp_path, params(reg), "a", 5.0, reg)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(hub.HubPushError, match="set HF_TOKEN"):
        hub.push_version(Registry(reg), "v0001", "org/thinker")


@contextmanager
def refusing_port() -> Iterator[str]:
    """A loopback address where nothing listens: a bound socket that never accepts (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


def test_real_hf_api_uses_hf_endpoint_and_fails_clearly(
    tmp_path: Path, reg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    register(tmp_path, params(reg), "a", 5.0, reg)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token_never_sent_anywhere")
    with refusing_port() as endpoint:
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        with pytest.raises(hub.HubPushError, match="offline mode"):
            hub.make_hf_api()
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # let it reach the loopback stub
        api = hub.make_hf_api()
        assert api.endpoint == endpoint  # type: ignore[attr-defined]
        with pytest.raises(hub.HubPushError, match=rf"org/thinker@main on {endpoint} failed: .*refused"):
            hub.push_version(Registry(reg), "v0001", "org/thinker", api=api)


# --- files follow the process umask ------------------------------------------------------------------------------
@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def modes(root: Path) -> dict[str, int]:
    return {p.relative_to(root.parent).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}


@pytest.mark.parametrize("mask", [0o022, 0o002])
def test_registry_files_follow_the_umask(tmp_path: Path, reg: Path, mask: int) -> None:
    with umask(mask):
        p = params(reg)
        ckpt = make_checkpoint(tmp_path, "a", b"a" * 8, p)
        (ckpt / "model.safetensors").chmod(0o600)  # as transformers saves it: the registry's copy follows the umask
        promote.run(p, ckpt, make_eval(tmp_path, "eval-a", 5.0, ckpt, p), reg)
        register(tmp_path, p, "b", 6.0, reg)
        promote.rollback(Registry(reg), "umask test")
        write_json(tmp_path / "single.json", {"x": 1})
        with atomic_dir(tmp_path / "folder") as tmp:
            (tmp / "f").write_text("y")
    found = modes(reg)
    assert any(k.endswith("README.md") for k in found) and any(k.endswith("decisions.jsonl") for k in found)
    for name, mode in found.items():
        want = 0o777 & ~mask if (tmp_path / name).is_dir() else 0o666 & ~mask
        assert mode == want, (name, oct(mode), oct(want))
    assert stat.S_IMODE((tmp_path / "single.json").stat().st_mode) == 0o666 & ~mask
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o777 & ~mask
