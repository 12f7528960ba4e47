"""Promotion: registry versions, the champion alias, the margin rule, idempotent registration.

Checkpoints and eval summaries are built by hand here: promote's own logic is what is under test.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from editthinker.config import Params, parse_params
from editthinker.lineage import hash_path
from editthinker.registry import Registry
from editthinker.stages import promote
from eval_summaries import summary


def make_checkpoint(root: Path, name: str, weights: bytes) -> Path:
    ckpt = root / name
    (ckpt / "sub").mkdir(parents=True)
    (ckpt / "model.bin").write_bytes(weights)
    (ckpt / "sub" / "config.json").write_text(json.dumps({"hidden_size": 64}))
    (ckpt / "lineage.json").write_text(json.dumps({"stage": "rl", "params_sha256": "p" * 64, "inputs": {}}))
    return ckpt


def make_eval(root: Path, name: str, overall: float, *, of: Path, success_rate: float = 0.5, **kw: Any) -> Path:
    """An eval summary of checkpoint `of`, as the evaluate stage names it (lineage.inputs.rl_checkpoint), its
    challenger scoring `overall` on every item (kw: editor_overall, n, failures; eval_summaries.summary)."""
    d = root / name
    d.mkdir(parents=True)
    lineage = {"stage": "evaluate", "inputs": {"rl_checkpoint": hash_path(of), "sft_checkpoint": "s" * 64}}
    (d / "summary.json").write_text(json.dumps(summary(overall, lineage, success_rate=success_rate, **kw)))
    return d


def params(margin: float = 0.0, metric: str = "overall", **extra) -> Params:
    return parse_params({"promote": {"margin": margin, "primary_metric": metric}, **extra})


@pytest.fixture
def reg(tmp_path: Path) -> Path:
    return tmp_path / "registry"


def test_first_checkpoint_becomes_champion(tmp_path: Path, reg: Path) -> None:
    ckpt = make_checkpoint(tmp_path, "a", b"aaaa")
    d = promote.run(params(), ckpt, make_eval(tmp_path, "ea", 5.0, of=ckpt), reg)
    assert d["version"] == "v0001" and d["promoted"] and d["champion"] == "v0001"
    assert d["champion_metric"] is None and d["challenger_metric"] == 5.0
    r = Registry(reg)
    assert r.champion() == "v0001" and r.versions() == ["v0001"]
    # the version is a whole copy of the checkpoint, with the checkpoint's lineage extended
    assert hash_path(r.path("champion")) == hash_path(ckpt)
    lin = r.lineage("v0001")
    assert lin["stage"] == "rl" and lin["params_sha256"] == "p" * 64
    assert lin["registered"]["metrics"]["overall"] == 5.0
    assert lin["registered"]["eval_summary_sha256"] == hash_path(tmp_path / "ea" / "summary.json")
    assert [x["version"] for x in r.decisions()] == ["v0001"]


def test_worse_challenger_registered_not_promoted(tmp_path: Path, reg: Path) -> None:
    promote.run(params(), make_checkpoint(tmp_path, "a", b"a"), make_eval(tmp_path, "ea", 6.0, of=tmp_path / "a"), reg)
    d = promote.run(
        params(), make_checkpoint(tmp_path, "b", b"b"), make_eval(tmp_path, "eb", 5.0, of=tmp_path / "b"), reg
    )
    assert d["version"] == "v0002" and not d["promoted"]
    assert d["champion"] == "v0001" and d["champion_metric"] == 6.0 and d["challenger_metric"] == 5.0
    r = Registry(reg)
    assert r.versions() == ["v0001", "v0002"] and r.champion() == "v0001"
    assert [x["promoted"] for x in r.decisions()] == [True, False]


def test_better_by_less_than_margin_not_promoted(tmp_path: Path, reg: Path) -> None:
    p = params(margin=0.5)
    promote.run(p, make_checkpoint(tmp_path, "a", b"a"), make_eval(tmp_path, "ea", 6.0, of=tmp_path / "a"), reg)
    d = promote.run(p, make_checkpoint(tmp_path, "b", b"b"), make_eval(tmp_path, "eb", 6.3, of=tmp_path / "b"), reg)
    assert not d["promoted"] and d["champion"] == "v0001" and "0.5" in d["reason"]
    # exactly the margin is not "more than" the margin
    d = promote.run(p, make_checkpoint(tmp_path, "c", b"c"), make_eval(tmp_path, "ec", 6.5, of=tmp_path / "c"), reg)
    assert not d["promoted"] and Registry(reg).champion() == "v0001"


def test_better_by_more_than_margin_promoted(tmp_path: Path, reg: Path) -> None:
    p = params(margin=0.5)
    promote.run(p, make_checkpoint(tmp_path, "a", b"a"), make_eval(tmp_path, "ea", 6.0, of=tmp_path / "a"), reg)
    d = promote.run(p, make_checkpoint(tmp_path, "b", b"b"), make_eval(tmp_path, "eb", 6.6, of=tmp_path / "b"), reg)
    assert d["promoted"] and d["version"] == "v0002" and d["champion"] == "v0002"
    assert d["previous_champion"] == "v0001" and d["champion_metric"] == 6.0
    assert Registry(reg).champion() == "v0002"


def test_primary_metric_is_configurable(tmp_path: Path, reg: Path) -> None:
    p = params(metric="success_rate")
    promote.run(
        p,
        make_checkpoint(tmp_path, "a", b"a"),
        make_eval(tmp_path, "ea", 6.0, success_rate=0.4, of=tmp_path / "a"),
        reg,
    )
    # worse overall, better success rate: promoted on success_rate
    d = promote.run(
        p,
        make_checkpoint(tmp_path, "b", b"b"),
        make_eval(tmp_path, "eb", 5.0, success_rate=0.6, of=tmp_path / "b"),
        reg,
    )
    assert d["promoted"] and d["metric"] == "success_rate" and d["challenger_metric"] == 0.6


def test_same_checkpoint_twice_is_a_noop(tmp_path: Path, reg: Path) -> None:
    ckpt = make_checkpoint(tmp_path, "a", b"aaaa")
    first = promote.run(params(), ckpt, make_eval(tmp_path, "ea", 5.0, of=ckpt), reg)
    # the same content under another name is the same checkpoint
    again = make_checkpoint(tmp_path, "a-copy", b"aaaa")
    second = promote.run(params(), again, make_eval(tmp_path, "eb", 5.0, of=again), reg)
    assert second["version"] == first["version"] == "v0001"
    assert not second["registered_new"] and not second["promoted"] and second["champion"] == "v0001"
    assert Registry(reg).versions() == ["v0001"]


def test_missing_summary_is_a_clear_error(tmp_path: Path, reg: Path) -> None:
    empty = tmp_path / "eval"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"eval/summary\.json"):
        promote.run(params(), make_checkpoint(tmp_path, "a", b"a"), empty, reg)
    assert Registry(reg).versions() == []  # nothing registered


def test_summary_without_the_metric_is_a_clear_error(tmp_path: Path, reg: Path) -> None:
    d = tmp_path / "eval"
    d.mkdir()
    (d / "summary.json").write_text(json.dumps({"challenger": {"semantic": 7.0}}))
    with pytest.raises(ValueError, match=r"summary\.json has no finite challenger\.overall"):
        promote.run(params(), make_checkpoint(tmp_path, "a", b"a"), d, reg)


def test_other_benchmark_is_not_compared(tmp_path: Path, reg: Path) -> None:
    promote.run(params(), make_checkpoint(tmp_path, "a", b"a"), make_eval(tmp_path, "ea", 5.0, of=tmp_path / "a"), reg)
    other = params(evaluate={"num_tasks": 7})
    d = promote.run(other, make_checkpoint(tmp_path, "b", b"b"), make_eval(tmp_path, "eb", 9.0, of=tmp_path / "b"), reg)
    assert not d["promoted"] and "benchmark" in d["reason"] and Registry(reg).champion() == "v0001"


def test_concurrent_promotions_get_distinct_versions(tmp_path: Path, reg: Path) -> None:
    ckpts = [make_checkpoint(tmp_path, f"c{i}", bytes([i]) * 100) for i in range(6)]
    evals = [make_eval(tmp_path, f"e{i}", float(i), of=ckpts[i]) for i in range(6)]
    errors: list[BaseException] = []

    def go(i: int) -> None:
        try:
            promote.run(params(), ckpts[i], evals[i], reg)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    r = Registry(reg)
    assert r.versions() == [f"v{i:04d}" for i in range(1, 7)]
    assert len(r.decisions()) == 6
    assert r.lineage("champion")["registered"]["metrics"]["overall"] == 5.0  # the best one holds the alias
    assert not [p for p in reg.iterdir() if p.name.startswith(".v")]  # no temporary leftovers
