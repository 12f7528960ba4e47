"""The promotion rule: paired on the same items, against the editor alone and the champion, with a format-failure
limit and an optional public-benchmark gate. Every refusal is registered and logged with its reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from editthinker.config import parse_params
from editthinker.lineage import hash_path
from editthinker.promotion import check_beats, check_format, decide, format_failure_rate, keep_trained
from editthinker.registry import Registry
from editthinker.stages import promote
from eval_summaries import per_item, summary
from test_promote import make_checkpoint


def write_eval(root: Path, name: str, doc: dict) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps(doc))
    return d


def lineage_of(ckpt: Path) -> dict:
    return {"stage": "evaluate", "inputs": {"rl_checkpoint": hash_path(ckpt)}}


def noisy(base: float, n: int, spread: float) -> list[float]:
    """A deterministic zig-zag around `base`: a paired difference with this much noise per item."""
    return [base + (spread if i % 2 else -spread) for i in range(n)]


def test_a_lift_whose_interval_includes_zero_is_refused() -> None:
    editor = per_item(noisy(5.0, 20, 2.0), 20)
    challenger = per_item([x + (3.0 if i % 4 == 0 else -0.5) for i, x in enumerate(editor["overall"])], 20)
    check = check_beats(challenger, editor, "the editor alone", "overall", 0.0, 0.95)
    assert check.difference is not None and check.difference.mean > 0  # a lift on average ...
    assert check.difference.low <= 0 and not check.passed  # ... that the interval does not carry
    assert "does not beat the editor alone" in check.reason


def test_a_clear_paired_lift_passes_and_the_margin_counts() -> None:
    editor = per_item(noisy(5.0, 40, 2.0), 40)
    challenger = per_item([x + 1.0 for x in editor["overall"]], 40)
    assert check_beats(challenger, editor, "e", "overall", 0.0, 0.95).passed
    assert not check_beats(challenger, editor, "e", "overall", 1.0, 0.95).passed  # exactly +1: not above 1


def test_success_rate_is_paired_on_success() -> None:
    editor = per_item(5.0, 50, success_rate=0.4)
    challenger = per_item(5.0, 50, success_rate=0.6)  # the same 20 successes plus 10 more
    check = check_beats(challenger, editor, "the editor alone", "success_rate", 0.0, 0.95)
    assert check.passed and "points" in check.reason


def test_items_are_matched_by_id_not_by_position() -> None:
    editor = per_item(list(range(10)), 10)
    challenger = {k: list(reversed(v)) for k, v in per_item([x + 1.0 for x in range(10)], 10).items()}
    check = check_beats(challenger, editor, "e", "overall", 0.0, 0.95)
    assert check.difference is not None and check.difference.low == pytest.approx(1.0)
    assert not check_beats(per_item(5.0, 3) | {"item": ["x", "y", "z"]}, editor, "e", "overall", 0, 0.95).passed


def test_format_failures_over_the_limit_refuse_first() -> None:
    items = per_item(9.0, 20, failures=4)
    assert format_failure_rate(items) == pytest.approx(0.2)
    assert not check_format(items, 0.05).passed and check_format(items, 0.25).passed
    checks = decide(items, per_item(1.0, 20), None, None, "overall", 0.0, 0.95, 0.05)
    assert len(checks) == 1 and "fail the answer format" in checks[0].reason


def test_the_trained_model_is_kept_unless_it_is_below_its_start_or_malformed() -> None:
    """rl.select's rule: the point estimate of the paired difference decides (a choice of which model to ship);
    the format limit comes first; items are paired by id."""
    start = per_item(noisy(5.0, 20, 1.0), 20)
    equal = keep_trained(per_item(noisy(5.0, 20, 1.0), 20), start, "overall", 0.95, 0.05)
    assert [c.passed for c in equal] == [True, True] and "+0 [" in equal[1].reason
    below = per_item([x - 0.25 for x in start["overall"]], 20)
    checks = keep_trained(below, start, "overall", 0.95, 0.05)
    assert not checks[-1].passed and "below its start's: -0.25" in checks[-1].reason
    above = per_item([x + (1.0 if i % 3 == 0 else -0.4) for i, x in enumerate(start["overall"])], 20)
    diff = keep_trained(above, start, "overall", 0.95, 0.05)[-1].difference
    assert diff is not None and diff.mean > 0 and diff.low < 0  # kept on its mean, its interval spanning 0
    assert keep_trained(above, start, "semantic", 0.95, 0.05)[-1].passed
    malformed = keep_trained(per_item(9.0, 20, failures=2), start, "overall", 0.95, 0.05)
    assert len(malformed) == 1 and not malformed[0].passed
    reordered = {k: v[::-1] for k, v in below.items()}
    assert keep_trained(reordered, start, "overall", 0.95, 0.05)[-1].difference.mean == pytest.approx(-0.25)


def test_promote_refuses_a_challenger_below_the_editor_alone_with_no_champion(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path, "a", b"aaaa")
    ev = write_eval(tmp_path, "ev", summary(5.0, lineage_of(ckpt), editor_overall=6.0))
    reg = tmp_path / "registry"
    d = promote.run(parse_params({}), ckpt, ev, reg)
    assert not d["promoted"] and d["champion"] is None and "does not beat the editor alone" in d["reason"]
    r = Registry(reg)
    assert r.versions() == ["v0001"] and r.champion() is None  # registered, refused, logged with the reason
    assert r.decisions()[-1]["reason"] == d["reason"]


def test_promote_refuses_malformed_answers_even_with_better_scores(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path, "a", b"aaaa")
    ev = write_eval(tmp_path, "ev", summary(9.0, lineage_of(ckpt), editor_overall=1.0, failures=20))
    d = promote.run(parse_params({}), ckpt, ev, tmp_path / "registry")
    assert not d["promoted"] and "100.0% of its answers fail" in d["reason"]


def test_promote_pairs_the_challenger_with_the_champion(tmp_path: Path) -> None:
    reg = tmp_path / "registry"
    p = parse_params({})
    a = make_checkpoint(tmp_path, "a", b"aaaa")
    first = promote.run(p, a, write_eval(tmp_path, "ea", summary(6.0, lineage_of(a))), reg)
    assert first["promoted"] and first["reason"].startswith("no champion yet")
    b = make_checkpoint(tmp_path, "b", b"bbbb")
    tie = promote.run(p, b, write_eval(tmp_path, "eb", summary(6.0, lineage_of(b))), reg)
    assert not tie["promoted"] and "does not beat the champion v0001" in tie["reason"]
    c = make_checkpoint(tmp_path, "c", b"cccc")
    better = promote.run(p, c, write_eval(tmp_path, "ec", summary(6.5, lineage_of(c))), reg)
    assert better["promoted"] and "beats the champion v0001" in better["reason"]
    assert Registry(reg).champion() == better["version"]


def test_a_summary_without_per_item_outcomes_is_refused_with_its_name(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path, "a", b"aaaa")
    doc = summary(6.0, lineage_of(ckpt))
    del doc["per_item"]
    with pytest.raises(ValueError, match="per-item outcomes"):
        promote.run(parse_params({}), ckpt, write_eval(tmp_path, "ev", doc), tmp_path / "registry")


def test_the_benchmark_gate_is_required_and_counts(tmp_path: Path) -> None:
    gate = {"benchmarks": {"gate": {"benchmark": "gedit", "metric": "overall", "margin": 0.0}}}
    p = parse_params(gate)
    ckpt = make_checkpoint(tmp_path, "a", b"aaaa")
    ev = write_eval(tmp_path, "ev", summary(6.0, lineage_of(ckpt)))
    with pytest.raises(ValueError, match="benchmark report"):
        promote.run(p, ckpt, ev, tmp_path / "registry")
    result = {"headline": "overall", "metrics": {"overall": 5.5}, "intervals": {}, "max_turns": 5,
              "complete": False, "counts": {"scored": 3, "items": 4}}  # fmt: skip
    report = {"rows": [{"editor": "painter", "system": "thinker-rl", "kind": "thinker", "results": {"gedit": result}}]}
    (tmp_path / "report.json").write_text(json.dumps(report))
    d = promote.run(p, ckpt, ev, tmp_path / "registry", tmp_path / "report.json")
    assert not d["promoted"] and "benchmark gate" in d["reason"] and "3 of 4 items" in d["reason"]
    result["complete"] = True
    (tmp_path / "report.json").write_text(json.dumps(report))
    d = promote.run(p, ckpt, ev, tmp_path / "registry2", tmp_path / "report.json")
    assert d["promoted"]
    assert Registry(tmp_path / "registry2").registered("v0001")["metrics"]["benchmark.gedit.overall"] == 5.5


def test_a_version_refused_at_registration_stays_refused_when_promoted_by_hand(tmp_path: Path) -> None:
    """`registry promote` keeps the checks that need no champion: a version below the editor alone is refused
    by hand too (with no champion yet), unless forced."""
    reg_dir = tmp_path / "registry"
    ckpt = make_checkpoint(tmp_path, "a", b"aaaa")
    d = promote.run(
        parse_params({}), ckpt, write_eval(tmp_path, "ev", summary(5.0, lineage_of(ckpt), editor_overall=6.0)), reg_dir
    )
    assert not d["promoted"]
    reg = Registry(reg_dir)
    assert reg.registered(d["version"])["eligible"]["passed"] is False
    with pytest.raises(promote.PromotionRefused, match="refused when registered"):
        promote.promote_version(parse_params({}), reg, d["version"], "by hand")
    assert reg.champion() is None
    forced = promote.promote_version(parse_params({}), reg, d["version"], "by hand", force=True)
    assert forced["promoted"] and reg.champion() == d["version"]
