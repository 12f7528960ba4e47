"""API faults never change data: the generate stage with the expert and the judge behind a stub server
(tests/openai_stub.py) that injects seeded faults. Faults the SDK retries leave the dataset as it is without
them; a call that still fails after its retries fails the run (nothing written, no format failure), and a
rerun gives the fault-free dataset. Retries and failures are counted in `api_usage`."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from typing import Any

import pytest

from editthinker.config import parse_params
from editthinker.protocol import format_expert_answer
from editthinker.records import iter_rows, read_manifest
from editthinker.stages import generate
from editthinker.stages.generate import GenerationFailed
from openai_stub import Action, Answer, Status, StubOpenAIServer

FAULT = Status(503, {"retry-after-ms": "1"})  # retried by the SDK after 1 ms
_JUDGE_KEYS = ("editing_success", "over_editing", "naturalness", "artifacts")


def answers(body: dict[str, Any]) -> Action:
    """Deterministic answers from the request: the expert asks for one rewrite, then is satisfied; the judge's
    scores are a hash of what it was shown (both images and the instruction)."""
    user = body["messages"][1]
    if body["response_format"]["json_schema"]["name"] == "viescore":
        h = hashlib.sha256(json.dumps(user, sort_keys=True).encode()).digest()
        return Answer(json.dumps({"reasoning": "stub", **{k: h[i] % 11 for i, k in enumerate(_JUDGE_KEYS)}}))
    text = user["content"][-1]["text"]
    original = re.search(r"Original instruction: (.*)", text).group(1)  # type: ignore[union-attr]
    previous = re.search(r"Previous instruction .*?: (.*)", text).group(1)  # type: ignore[union-attr]
    if previous == original:
        return Answer(format_expert_answer(False, "not yet", f"{original}, exactly as asked"))
    return Answer(format_expert_answer(True, "done", previous))


def api_params(base_url: str, cache_dir: str = "", max_retries: int = 10):
    api = {"kind": "openai", "base_url": base_url, "model": "stub", "timeout_s": 10.0, "max_retries": max_retries,
           "concurrency": 4, "cache_dir": cache_dir}  # fmt: skip
    return parse_params(
        {
            "expert": api,
            "judge": {**api, "format_retries": 0},
            "generate": {"num_tasks": 16, "max_turns": 3, "shards": 2},
        }
    )


def turns_are_contiguous(data_dir) -> bool:
    by_traj: dict[str, list[int]] = {}
    for r in iter_rows(data_dir, columns=["trajectory_id", "turn"]):
        by_traj.setdefault(r["trajectory_id"], []).append(r["turn"])
    return all(sorted(t) == list(range(1, len(t) + 1)) for t in by_traj.values())


def test_thirty_percent_faults_give_the_fault_free_dataset_and_count_the_retries(tmp_path):
    with StubOpenAIServer(respond=answers, fault_seed=3, fault=FAULT) as srv:
        params = api_params(srv.base_url)  # no cache: every call goes to the server in both runs
        clean = generate.run(params, tmp_path / "clean")
        assert srv.faults_injected == 0
        srv.fault_rate = 0.3
        before = srv.calls
        faulty = generate.run(params, tmp_path / "faulty")
        requests = srv.calls - before
    assert faulty["dataset_sha256"] == clean["dataset_sha256"]
    assert 0.2 < srv.faults_injected / requests < 0.4  # the seeded 30%
    usage = read_manifest(tmp_path / "faulty")["api_usage"]
    assert usage["expert"]["retries"] + usage["judge"]["retries"] == srv.faults_injected
    assert usage["expert"]["failed_calls"] == usage["judge"]["failed_calls"] == 0
    clean_usage = read_manifest(tmp_path / "clean")["api_usage"]
    assert clean_usage["expert"]["retries"] == clean_usage["judge"]["retries"] == 0
    assert clean_usage["expert"]["calls"] == usage["expert"]["calls"] > 16  # multi-turn: one rewrite each
    assert turns_are_contiguous(tmp_path / "faulty")


@pytest.mark.parametrize("role", ["expert", "judge"])
def test_a_call_failing_after_its_retries_fails_the_run_and_a_rerun_gives_the_clean_dataset(tmp_path, role):
    broken = {"on": False}
    schema = {"expert": "expert_verdict", "judge": "viescore"}[role]

    def respond(body: dict[str, Any]) -> Action:
        if broken["on"] and body["response_format"]["json_schema"]["name"] == schema:
            return FAULT
        return answers(body)

    cache = tmp_path / "cache"
    with StubOpenAIServer(respond=respond) as srv:
        params = api_params(srv.base_url, str(cache), max_retries=2)
        reference = generate.run(params, tmp_path / "reference")
        shutil.rmtree(cache)
        broken["on"] = True
        failure = (
            rf"chunk of editors \['painter', 'mover'\], tasks t\S+\.\.t\S+, failed .*{role} call #\d+ .*after up to 2"
        )
        with pytest.raises(GenerationFailed, match=failure):
            generate.run(params, tmp_path / "traj")
        assert not (tmp_path / "traj").exists()  # nothing written: no format failure, no gap
        # no lock, no temporary; at most the resume folder with the images staged while the unit ran (by hash,
        # reused by the rerun) and no finished unit
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".traj")] in ([], [".traj.units"])
        assert not list(tmp_path.glob(".traj.units/*/unit-*"))
        calls_failed_run = srv.calls
        broken["on"] = False
        rerun = generate.run(params, tmp_path / "traj")
    assert rerun["dataset_sha256"] == reference["dataset_sha256"]
    assert turns_are_contiguous(tmp_path / "traj")
    usage = read_manifest(tmp_path / "traj")["api_usage"]
    cached = usage["expert"]["cached_calls"] + usage["judge"]["cached_calls"]
    assert cached > 0  # what the failed run had answered was not asked again
    assert srv.calls - calls_failed_run == usage["expert"]["calls"] + usage["judge"]["calls"]
