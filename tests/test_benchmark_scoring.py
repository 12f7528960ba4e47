"""Benchmark scoring: each protocol's parser, aggregation against hand-computed values from a scripted judge on
loopback, failed and garbage judge answers ending as reported missing scores, missing outputs, rescoring and
resume without repeated judge calls, bootstrap intervals, the comparison report and the promotion gate."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import pytest

from benchmark_fixtures import StandInEditor, identify, scripted_judge, write
from editthinker.benchmarks import get_benchmark, runner, scoring
from editthinker.benchmarks.base import ScoredItem
from editthinker.benchmarks.gate import benchmark_metric, gate_decision
from editthinker.benchmarks.gedit import parse_pair
from editthinker.benchmarks.imgedit import parse_scores
from editthinker.benchmarks.kris import parse_keys
from editthinker.benchmarks.report import build_report, to_markdown, write_report
from editthinker.benchmarks.risebench import parse_final
from editthinker.benchmarks.stats import bootstrap_intervals
from editthinker.config import parse_params
from editthinker.protocol import FormatError
from openai_stub import Answer, Status, StubOpenAIServer


def _params(tmp_path: Path, base_url: str, **judge):
    j = {"base_url": base_url, "cache_dir": str(tmp_path / "judge-cache"), "max_retries": 0, "timeout_s": 5,
         "price_per_1k_input": 0.002, "price_per_1k_output": 0.008, **judge}  # fmt: skip
    return parse_params({"benchmarks": {"judge": j, "bootstrap_resamples": 200}})


def _edited_run(tmp_path: Path, bench: str) -> Path:
    data = write(bench, tmp_path / bench)
    editor = StandInEditor()
    s = runner.run(
        parse_params({}), bench, data, editor.name, "editor", 1, tmp_path / "runs", editors={editor.name: editor}
    )
    return Path(s["run_dir"])


# -- parsers --------------------------------------------------------------------------------------------------
def test_parsers_take_well_formed_answers_and_reject_the_rest():
    assert parse_pair('```json\n{"score": [7, 9.5], "reasoning": "x"}\n```') == {"a": 7.0, "b": 9.5}
    assert parse_pair('Sure! {"score": [3, 4]}') == {"a": 3.0, "b": 4.0}  # the JSON inside a chatty answer
    for bad in ('{"score": [1, 2, 3]}', '{"score": [11, 2]}', '{"score": ["8", 2]}', "8 and 6", ""):
        with pytest.raises(FormatError):
            parse_pair(bad)

    names = ["Prompt Compliance", "Visual Naturalness", "Physical & Detail Integrity"]
    text = "Brief reasoning: ok\n**Prompt Compliance**: 4\nVisual Naturalness: 3\nPhysical & Detail Integrity: 3"
    assert parse_scores(text, names) == {"Prompt Compliance": 4.0, "Visual Naturalness": 3.0,
                                         "Physical & Detail Integrity": 3.0}  # fmt: skip
    assert list(parse_scores("Brief reasoning: x\nA: 5\nB: 4\nC: 1", names).values()) == [5.0, 4.0, 1.0]
    for bad in ("Brief reasoning: x\nScore: 3 (Acceptable)", "A: 5\nB: 4", "A: 6\nB: 4\nC: 1"):
        with pytest.raises(FormatError):
            parse_scores(bad, names)

    assert parse_final("Final Score: 2\n...on reflection\n**Final Score**: 4") == {"score": 4.0}
    assert parse_final("final score: 1", 0, 1) == {"score": 1.0}
    for bad, lo, hi in (
        ("no score", 1, 5),
        ("Final Score: 6", 1, 5),
        ("Final Score: 3", 0, 1),
        ("Final Score: 2.5", 1, 5),
    ):
        with pytest.raises(FormatError):
            parse_final(bad, lo, hi)

    assert parse_keys('ok {"consistency_score": 4, "reasoning": "x"} done', ("consistency_score",)) == {
        "consistency": 4.0
    }
    assert parse_keys("instruction_score: 2\nknowledge_score: 5", ("instruction_score", "knowledge_score")) == {
        "instruction": 2.0, "knowledge": 5.0}  # fmt: skip
    for bad in ('{"quality_score": 0}', '{"quality": 3}', "looks fine, 4"):  # no guessing from a stray digit
        with pytest.raises(FormatError):
            parse_keys(bad, ("quality_score",))


# -- aggregation against hand-computed values -------------------------------------------------------------------
def _sqrt(a: float, b: float) -> float:
    return math.sqrt(a * b)


EXPECTED = {
    # GEdit: SC = min(pair), PQ = min(pair), O = sqrt(SC PQ); mean per task type, then over types.
    # k1 bg (6, 7), k2 bg (4, 8), k3 colour (10, 6), k4 add (2, 10); intersection rows k1, k3.
    "gedit": {
        "semantic": ((6 + 4) / 2 + 10 + 2) / 3,
        "quality": ((7 + 8) / 2 + 6 + 10) / 3,
        "overall": ((_sqrt(6, 7) + _sqrt(4, 8)) / 2 + _sqrt(10, 6) + _sqrt(2, 10)) / 3,
        "intersection_semantic": (6 + 10) / 2,
        "intersection_quality": (7 + 6) / 2,
        "intersection_overall": (_sqrt(6, 7) + _sqrt(10, 6)) / 2,
    },
    # ImgEdit: item = round(mean of 3, 2): 22 -> 4.33, 105 -> 2.67 (add), 1166 -> 4.0 (style), 1168 -> 1.33 (replace)
    "imgedit": {"overall": ((4.33 + 2.67) / 2 + 4.0 + 1.33) / 3, "item_mean": (4.33 + 2.67 + 4.0 + 1.33) / 4},
    # RISEBench: temporal 5/5/5 -> 5 (full marks); causal .3*4+.5*5+.2*5 = 4.7; spatial R=1: (.9+.5+.8)/2 = 1.1;
    # logical 1/1 -> 5/5 -> 5 (full); logical 1/0 -> C 5, R 1: (1.5+.7)/2 = 1.1. Accuracy 2 of 5.
    "risebench": {"accuracy": 40.0, "score": 16.9 / 5, "score_pct": 25 * (16.9 / 5 - 1),
                  "consistency": (5 + 4 + 3 + 5 + 5) / 5, "reasoning": (5 + 5 + 1 + 5 + 1) / 5,
                  "plausibility": (5 + 5 + 4) / 3},
    # KRIS: (s-1)*25 per dimension, item = mean of its dimensions:
    # colour/1 (100, 75, 50) = 75; colour/2 (50, 50, 50) = 50; biology (75, 25, 50 knowledge, 100) = 62.5;
    # viewpoint (25, 100, 75) = 66.67; multi-element (0, 0, 0) = 0
    "kris": {"overall": (75 + 50 + 62.5 + 200 / 3 + 0) / 5, "consistency": (100 + 50 + 75 + 25 + 0) / 5,
             "instruction": (75 + 50 + 25 + 100 + 0) / 5, "quality": (50 + 50 + 100 + 75 + 0) / 5, "knowledge": 50.0,
             "factual": (75 + 50 + 200 / 3) / 3, "conceptual": 62.5, "procedural": 0.0},
}  # fmt: skip
CALLS = {"gedit": 4 * 2, "imgedit": 4, "risebench": 3 * 3 + 2 * 2, "kris": 5 * 3}


@pytest.mark.parametrize("bench", sorted(EXPECTED))
def test_scores_match_hand_computed_values(tmp_path, bench):
    run_dir = _edited_run(tmp_path, bench)
    with StubOpenAIServer(respond=scripted_judge(bench)) as srv:
        result = scoring.score_run(_params(tmp_path, srv.base_url), run_dir)
        assert srv.calls == CALLS[bench]
        assert {b.get("model") for b in srv.requests} == {get_benchmark(bench).default_judge}
    assert result["metrics"] == pytest.approx(EXPECTED[bench])
    assert result["complete"] and result["counts"]["scored"] == result["counts"]["items"]
    headline = result["headline"]
    lo, hi = result["intervals"][headline]
    assert lo <= result["metrics"][headline] <= hi
    usage = result["judge_usage"]
    assert usage["calls"] == CALLS[bench] and usage["cost_usd"] == pytest.approx(
        CALLS[bench] * (0.1 * 0.002 + 0.02 * 0.008)
    )
    lines = [json.loads(line) for line in (run_dir / "judgements.jsonl").read_text().splitlines()]
    assert sum(len(rec["calls"]) for rec in lines) == CALLS[bench] and all("values" in rec for rec in lines)
    saved = json.loads((run_dir / "scores.json").read_text())
    assert (
        saved["metrics"] == pytest.approx(result["metrics"])
        and saved["judge"]["model"] == get_benchmark(bench).default_judge
    )


def test_risebench_360_rows_ask_what_their_flags_say(tmp_path):
    from benchmark_fixtures import write_risebench

    path = write_risebench(tmp_path / "rise360", schema="360")
    bench = get_benchmark("risebench")
    items = {it.item_id: it for it in bench.load(str(path), parse_params({}).benchmarks).items}
    png = items["temporal_reasoning_1"].load_source()
    free = bench.judge_calls(items["temporal_reasoning_1"], png, png)
    assert [c.name for c in free] == ["reasoning", "plausibility"]  # consistency-free: no consistency call
    causal = bench.judge_calls(items["causal_reasoning_1"], png, png)
    reasoning = next(c for c in causal if c.name == "reasoning")
    assert sum(p["type"] == "image_url" for p in reasoning.messages[0]["content"]) == 2  # reasoning_img: the input too
    # consistency-free: 0.2 VP + 0.8 R and full marks on the dimensions it has
    s = bench.item_scores(items["temporal_reasoning_1"], {"reasoning": {"score": 5.0}, "plausibility": {"score": 5.0}})
    assert s.values["score"] == 5.0 and s.values["accuracy"] == 100.0 and "consistency" not in s.values


# -- nothing silently dropped -----------------------------------------------------------------------------------
def test_failed_and_garbage_judge_answers_are_reported_missing_never_guessed(tmp_path):
    run_dir = _edited_run(tmp_path, "gedit")
    (run_dir / "fullset" / "subject-add" / "en" / "k4_SRCIMG.png").unlink()  # the official scorer would skip k4
    good = scripted_judge("gedit")

    def judge(body):
        item, call = identify("gedit", body)
        if (item, call) == ("k2", "sc"):
            return Status(500)
        if (item, call) == ("k3", "pq"):
            return Answer("The image looks natural, I would say 8 out of 10.")
        return good(body)

    with StubOpenAIServer(respond=judge) as srv:
        result = scoring.score_run(_params(tmp_path, srv.base_url, max_retries=1, format_retries=2), run_dir)
        asked = [identify("gedit", b) for b in srv.requests]
    assert asked.count(("k2", "sc")) == 2  # retried once by the client, then given up
    assert asked.count(("k3", "pq")) == 3  # asked again twice after the unparsable answer
    assert result["counts"] == {"items": 4, "scored": 1, "missing_outputs": 1, "missing_scores": 2, "excluded": 0}
    assert result["missing_outputs"] == ["k4"] and not result["complete"]
    assert result["missing_scores"]["k2"].startswith("sc: api error")
    assert result["missing_scores"]["k3"].startswith("pq: unparsable answer")
    assert result["metrics"] == pytest.approx({"semantic": 6, "quality": 7, "overall": _sqrt(6, 7),
                                               "intersection_semantic": 6, "intersection_quality": 7,
                                               "intersection_overall": _sqrt(6, 7)})  # k1 only  # fmt: skip
    report = build_report([{**result, "path": str(run_dir)}])
    assert "(1/4 scored)" in to_markdown(report)
    assert "1 missing outputs, 2 missing scores of 4 items" in to_markdown(report)


def test_rescoring_and_resuming_repeat_no_judge_call(tmp_path):
    run_dir = _edited_run(tmp_path, "kris")
    good = scripted_judge("kris")
    lock, state = threading.Lock(), {"answered": 0, "down_after": 6}

    def judge(body):  # goes away after six answers (as if the scorer were killed), until it is back
        with lock:
            state["answered"] += 1
            down = state["answered"] > state["down_after"]
        return Status(503) if down else good(body)

    with StubOpenAIServer(respond=judge) as srv:
        first = scoring.score_run(_params(tmp_path, srv.base_url), run_dir)
        assert first["counts"]["missing_scores"] > 0 and srv.calls == CALLS["kris"]
        state["down_after"] = 10**6
        second = scoring.score_run(_params(tmp_path, srv.base_url), run_dir)
        assert srv.calls == 2 * CALLS["kris"] - 6  # only what had failed is asked again
        third = scoring.score_run(_params(tmp_path, srv.base_url), run_dir)
        assert srv.calls == 2 * CALLS["kris"] - 6  # a rescore is answered from the cache
    assert second["complete"] and second["metrics"] == pytest.approx(EXPECTED["kris"])
    assert third["metrics"] == second["metrics"] and third["judge_usage"]["cached_calls"] == CALLS["kris"]


def test_bootstrap_intervals_are_stratified_and_seeded():
    scored = [ScoredItem(str(i), "a" if i < 6 else "b", {"x": float(i)}) for i in range(10)]

    def metrics(items):
        return {"x": sum(s.values["x"] for s in items) / len(items), "n_b": sum(s.category == "b" for s in items)}

    ci = bootstrap_intervals(scored, metrics, 300, seed=1)
    assert ci["n_b"] == [4.0, 4.0]  # every resample keeps the category sizes
    assert ci["x"][0] < 4.5 < ci["x"][1] and ci == bootstrap_intervals(scored, metrics, 300, seed=1)
    assert bootstrap_intervals(scored, metrics, 0) == {} and bootstrap_intervals([], metrics, 10) == {}


# -- the report and the promotion gate ----------------------------------------------------------------------------
def _scores(editor, kind, label, bench, value, turns=5, scored=10, ci=(0.1, 0.2)):
    b = get_benchmark(bench)
    return {
        "benchmark": bench,
        "title": b.title,
        "headline": b.headline,
        "scale": b.scale,
        "run": f"{editor}-{label}",
        "editor": editor,
        "system": {"kind": kind, "thinker": "", "label": label},
        "max_turns": turns,
        "judge": {"model": b.default_judge},
        "metrics": {b.headline: value},
        "intervals": {b.headline: [value - ci[0], value + ci[1]]},
        "breakdown": {"cat": {"c1": {b.headline: value, "score": value, "accuracy": value}}},
        "counts": {"items": 10, "scored": scored, "missing_outputs": 10 - scored, "missing_scores": 0, "excluded": 0},
        "complete": scored == 10,
        "judge_usage": {"cost_usd": 0.5},
        "path": f"/runs/{bench}/{editor}-{label}-t{turns}",
    }


def test_report_orders_editor_thinker_expert_with_intervals_categories_and_ablation(tmp_path):
    scores = [
        _scores("flux", "expert", "expert", "gedit", 7.19),
        _scores("flux", "editor", "editor", "gedit", 6.18, turns=1),
        _scores("flux", "thinker", "thinker-rl", "gedit", 7.02),
        _scores("flux", "thinker", "thinker-rl", "gedit", 6.90, turns=2),
        _scores("flux", "editor", "editor", "risebench", 5.8, turns=1, scored=9),
        _scores("flux", "thinker", "thinker-rl", "risebench", 14.4),
    ]
    report = build_report(scores, max_turns=5)
    assert [(r["editor"], r["system"]) for r in report["rows"]] == [
        ("flux", "editor"),
        ("flux", "thinker-rl"),
        ("flux", "expert"),
    ]
    assert report["rows"][1]["results"]["gedit"]["value"] == 7.02  # the 5-turn run, not the ablation's 2-turn one
    assert report["ablation"] == {"flux / thinker-rl": {"gedit": {"2": 6.90, "5": 7.02}}}
    md = to_markdown(report)
    assert "| flux (editor -> thinker-rl -> expert) | 6.18 -> 7.02 -> 7.19 | 5.80 -> 14.40 -> - |" in md
    assert "| flux | thinker-rl | 7.02 [6.92, 7.22] |" in md and "5.80 [5.70, 6.00] (9/10 scored)" in md
    assert "### Turn ablation" in md and "| flux / thinker-rl | GEdit-EN | 6.90 | 7.02 |" in md

    for s in scores:  # the same through files: report.json, report.md and the plots
        d = tmp_path / "runs" / f"{s['benchmark']}-{s['run']}-t{s['max_turns']}"
        d.mkdir(parents=True)
        (d / "scores.json").write_text(json.dumps({k: v for k, v in s.items() if k != "path"}))
    write_report([tmp_path / "runs"], tmp_path / "report")
    assert {p.name for p in (tmp_path / "report").iterdir()} == {
        "report.json",
        "report.md",
        "comparison.png",
        "turn_ablation.png",
    }
    assert (tmp_path / "report" / "comparison.png").read_bytes()[:4] == b"\x89PNG"

    m = benchmark_metric(tmp_path / "report", "gedit")
    assert (m.value, m.system, m.ci95, m.key) == (7.02, "thinker-rl", (6.92, 7.22), "benchmark.gedit.overall")
    assert gate_decision(m, 6.9, 0.1) == (True, "gedit overall 7.0200 beats the champion's 6.9000 by more than 0.1")
    assert not gate_decision(m, 6.95, 0.1)[0] and gate_decision(m, None, 0.1)[0]
    rise = benchmark_metric(tmp_path / "report", "risebench", system="editor")
    assert not rise.complete and not gate_decision(rise, 1.0, 0.0)[0]
    with pytest.raises(ValueError, match="no finite metric 'accuracy'"):
        benchmark_metric(tmp_path / "report", "gedit", "accuracy")
    with pytest.raises(ValueError, match="no run of system 'thinker'"):
        benchmark_metric(tmp_path / "report", "kris")
