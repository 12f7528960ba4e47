"""The local registry binds every decision to content and survives damage: an eval summary of another checkpoint
is refused, version numbers are never reused, a torn decision log line does not break the log, every file that
does not parse is named, and a lock that cannot be taken names its holder."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from filelock import FileLock

from editthinker.lineage import hash_path
from editthinker.registry import COUNTER_FILE, DECISIONS_FILE, LOCK_FILE, Registry, RegistryError
from editthinker.stages import promote
from test_promote import make_checkpoint, make_eval, params


@pytest.fixture
def reg(tmp_path: Path) -> Path:
    return tmp_path / "registry"


def promote_new(tmp_path: Path, reg: Path, name: str, overall: float) -> dict:
    ckpt = make_checkpoint(tmp_path, name, name.encode() * 10)
    return promote.run(params(), ckpt, make_eval(tmp_path, f"e-{name}", overall, of=ckpt), reg)


# --- the eval summary must be the checkpoint's own ------------------------------------------------------------
def test_summary_of_another_checkpoint_is_refused(tmp_path: Path, reg: Path) -> None:
    sft = make_checkpoint(tmp_path, "sft", b"sft weights")
    rl = make_checkpoint(tmp_path, "rl", b"rl weights")
    rl_eval = make_eval(tmp_path, "eval-rl", 9.0, of=rl)
    with pytest.raises(promote.EvaluationMismatch, match=r"is the evaluation of checkpoint sha256 \w+ .* not of .*sft"):
        promote.run(params(), sft, rl_eval, reg)
    with pytest.raises(promote.EvaluationMismatch, match=hash_path(sft)):
        promote.challenge(params(), sft, rl_eval, reg)
    r = Registry(reg)
    assert r.versions() == [] and r.champion() is None and r.decisions() == []  # nothing registered
    assert promote.run(params(), rl, rl_eval, reg)["promoted"]  # its own checkpoint is fine


def test_summary_that_names_no_checkpoint_is_refused(tmp_path: Path, reg: Path) -> None:
    ckpt = make_checkpoint(tmp_path, "a", b"a")
    ev = make_eval(tmp_path, "ea", 5.0, of=ckpt)
    summary = json.loads((ev / "summary.json").read_text())
    del summary["lineage"]
    (ev / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(promote.EvaluationMismatch, match=r"does not name the checkpoint it evaluated"):
        promote.run(params(), ckpt, ev, reg)
    assert Registry(reg).versions() == []


def test_summary_may_name_another_challenger_input(tmp_path: Path, reg: Path) -> None:
    sft = make_checkpoint(tmp_path, "sft", b"sft weights")
    ev = make_eval(tmp_path, "eval", 5.0, of=make_checkpoint(tmp_path, "rl", b"rl"))
    summary = json.loads((ev / "summary.json").read_text())
    summary["lineage"]["inputs"]["sft_checkpoint"] = hash_path(sft)
    (ev / "summary.json").write_text(json.dumps({**summary, "challenger_input": "sft_checkpoint"}))
    assert promote.run(params(), sft, ev, reg)["promoted"]


# --- version numbers are a counter, not a listing -------------------------------------------------------------
def test_deleted_version_number_is_not_reused(tmp_path: Path, reg: Path) -> None:
    promote_new(tmp_path, reg, "a", 6.0)
    promote_new(tmp_path, reg, "b", 5.0)  # v0002, not promoted
    Registry(reg).path("v0002").rename(tmp_path / "deleted")
    d = promote_new(tmp_path, reg, "c", 4.0)
    assert d["version"] == "v0003" and not d["promoted"] and d["champion"] == "v0001"
    assert Registry(reg).versions() == ["v0001", "v0003"]


def test_deleted_champion_is_an_error_not_a_new_checkpoint(tmp_path: Path, reg: Path) -> None:
    promote_new(tmp_path, reg, "a", 5.0)
    promote_new(tmp_path, reg, "b", 6.0)  # v0002, champion
    r = Registry(reg)
    r.path("champion").rename(tmp_path / "deleted")
    # the next checkpoint must not take number 2 and with it the champion alias, unjudged
    with pytest.raises(RegistryError, match=r"alias 'champion' names v0002, but .*v0002 is missing"):
        promote_new(tmp_path, reg, "c", 1.0)
    assert r.versions() == ["v0001"] and len(r.decisions()) == 2  # nothing registered, nothing decided
    with r.locked():
        r.set_alias("champion", "v0001")  # the operator repairs the alias
    d = promote.run(params(), tmp_path / "c", tmp_path / "e-c", reg)
    assert d["version"] == "v0003" and not d["promoted"] and r.champion() == "v0001"


def test_registry_from_before_the_counter_continues_after_its_highest_folder(tmp_path: Path, reg: Path) -> None:
    promote_new(tmp_path, reg, "a", 5.0)
    promote_new(tmp_path, reg, "b", 4.0)
    (reg / COUNTER_FILE).unlink()
    assert promote_new(tmp_path, reg, "c", 3.0)["version"] == "v0003"


# --- the decision log survives a torn last line ---------------------------------------------------------------
def test_torn_last_decision_line(tmp_path: Path, reg: Path) -> None:
    promote_new(tmp_path, reg, "a", 5.0)
    log = reg / DECISIONS_FILE
    with open(log, "a") as fh:
        fh.write('{"version": "v0002", "promo')  # a crash mid-append
    r = Registry(reg)
    assert [x["version"] for x in r.decisions()] == ["v0001"]
    d = promote_new(tmp_path, reg, "b", 6.0)
    assert d["promoted"] and [x["version"] for x in r.decisions()] == ["v0001", "v0002"]
    assert all(json.loads(line) for line in log.read_text().splitlines())  # one whole record per line again
    assert (reg / f"{DECISIONS_FILE}.torn").read_text() == '{"version": "v0002", "promo\n'  # kept, not lost


def test_complete_last_line_without_newline_is_kept(tmp_path: Path, reg: Path) -> None:
    promote_new(tmp_path, reg, "a", 5.0)
    log = reg / DECISIONS_FILE
    log.write_text(log.read_text().rstrip("\n"))
    promote_new(tmp_path, reg, "b", 6.0)
    assert [x["version"] for x in Registry(reg).decisions()] == ["v0001", "v0002"]


def test_bad_line_inside_the_log_is_an_error_naming_it(tmp_path: Path, reg: Path) -> None:
    promote_new(tmp_path, reg, "a", 5.0)
    log = reg / DECISIONS_FILE
    log.write_text("not json\n" + log.read_text())
    with pytest.raises(RegistryError, match=re.escape(f"{log}, line 1: not valid JSON")):
        Registry(reg).decisions()


# --- every parse error names its file -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["aliases.json", COUNTER_FILE, "v0001/lineage.json"])
def test_truncated_file_is_named(tmp_path: Path, reg: Path, name: str) -> None:
    promote_new(tmp_path, reg, "a", 5.0)
    path = reg / name
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.raises(RegistryError, match=re.escape(f"{path}: not valid JSON")):
        promote_new(tmp_path, reg, "b", 6.0)


def test_truncated_aliases_named_when_read(tmp_path: Path, reg: Path) -> None:
    promote_new(tmp_path, reg, "a", 5.0)
    (reg / "aliases.json").write_text('{"champion": "v00')
    with pytest.raises(RegistryError, match=re.escape(f"{reg / 'aliases.json'}: not valid JSON (Unterminated string")):
        Registry(reg).champion()


# --- the lock (filelock): a holder file, a timeout that names the holder ---------------------------------------
def test_lock_records_its_holder(reg: Path) -> None:
    r = Registry(reg)
    with r.locked():
        holder = json.loads((reg / f"{LOCK_FILE}.holder").read_text())
        assert holder["pid"] == os.getpid() and holder["host"] and holder["since"]
    assert not (reg / f"{LOCK_FILE}.holder").exists()


def test_lock_timeout_names_the_holder(reg: Path) -> None:
    reg.mkdir()
    other = FileLock(reg / LOCK_FILE)  # another writer (its own file descriptor), holding the lock
    with other:
        (reg / f"{LOCK_FILE}.holder").write_text(json.dumps({"pid": 4242, "host": "trainer-7", "since": "then"}))
        held = r"within 0s: held by pid 4242 on host trainer-7 since then"
        with pytest.raises(RegistryError, match=held), Registry(reg, lock_timeout=0).locked():
            pass
