"""inflight: jobs a few at a time on worker threads (generate's units), roles shared by them, and usage scopes
that give each job its own API calls' counts."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from editthinker.backends.openai_api import OpenAIExpert
from editthinker.config import parse_params
from editthinker.inflight import Cancelled, Serialized, check, run_in_flight, shared
from editthinker.loop import EpisodeStart, run_episodes
from editthinker.roles import JudgeScore, ScoreRequest, ThinkRequest
from editthinker.usage import usage_scope
from openai_stub import Answer, StubOpenAIServer


def test_at_most_width_jobs_run_at_once_and_each_result_is_handled_on_the_callers_thread() -> None:
    width, lock = 3, threading.Lock()
    running, peak, handled = [0], [0], []
    together = threading.Barrier(width, timeout=30)  # broken (an error) unless `width` jobs run at the same time

    def job(k: int):  # type: ignore[no-untyped-def]
        def run(cancel: threading.Event) -> int:
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            if k < width:
                together.wait()
            with lock:
                running[0] -= 1
            return k

        return run

    caller = threading.get_ident()
    run_in_flight((job(k) for k in range(10)), width, lambda k: handled.append((k, threading.get_ident())))
    assert sorted(k for k, _ in handled) == list(range(10))
    assert {ident for _, ident in handled} == {caller}
    assert peak[0] == width


def test_a_failed_job_stops_new_ones_lets_the_running_finish_and_is_raised() -> None:
    drawn, handled = [], []
    failing = threading.Event()

    def jobs():  # type: ignore[no-untyped-def]
        for k in range(10):
            drawn.append(k)
            yield lambda cancel, k=k: work(k, cancel)

    def work(k: int, cancel: threading.Event) -> int:
        if k == 0:
            failing.wait(30)
            time.sleep(1.0)  # still running well after job 1 has failed
            check(cancel)  # not cancelled: a job's failure lets the others finish
            return k
        failing.set()
        raise ValueError(f"job {k} failed")

    with pytest.raises(ValueError, match="job 1 failed"):
        run_in_flight(jobs(), 2, handled.append)
    assert handled == [0]  # the job running beside the failure finished and was handled
    assert drawn == [0, 1]  # nothing drawn after the failure


def test_an_error_on_the_callers_thread_cancels_the_running_jobs_at_their_safe_points() -> None:
    seen: list[str] = []

    def slow(cancel: threading.Event) -> str:
        for _ in range(3000):
            try:
                check(cancel)
            except Cancelled:
                seen.append("cancelled")
                raise
            time.sleep(0.01)
        return "slow"

    def done(result: str) -> None:
        raise RuntimeError(f"could not keep {result}")

    with pytest.raises(RuntimeError, match="could not keep fast"):
        run_in_flight(iter([slow, lambda cancel: "fast"]), 2, done)
    assert seen == ["cancelled"]  # stopped early, not after its 30 s
    with pytest.raises(ValueError, match="width"):
        run_in_flight(iter([]), 0, print)


class _Unsafe:
    """A role that must never be called twice at once (as a diffusers pipeline)."""

    name, model_id = "unsafe", "unsafe/v1"

    def __init__(self) -> None:
        self.inside, self.overlaps = 0, 0

    def edit(self, requests: list[Any]) -> list[bytes]:
        self.inside += 1
        if self.inside > 1:
            self.overlaps += 1
        time.sleep(0.01)
        self.inside -= 1
        return [b"x"] * len(requests)


class _Safe(_Unsafe):
    thread_safe = True


def test_roles_that_are_not_thread_safe_are_called_one_at_a_time() -> None:
    unsafe, safe = _Unsafe(), _Safe()
    wrapped = shared(unsafe)
    assert isinstance(wrapped, Serialized) and shared(safe) is safe
    assert wrapped.model_id == "unsafe/v1" and wrapped.name == "unsafe"  # attributes pass through

    def hammer(role: Any) -> None:
        threads = [threading.Thread(target=lambda: [role.edit([1]) for _ in range(10)]) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    hammer(wrapped)
    assert unsafe.overlaps == 0
    hammer(safe)  # the check can fail: unwrapped calls do overlap
    assert safe.overlaps > 0


class _ApiJudge:
    """A judge over the expert's client (the stub answers both), so its calls are counted as the expert's."""

    name, model_id = "judge", "judge/v1"

    def __init__(self, expert: OpenAIExpert) -> None:
        self.expert = expert

    def score_many(self, requests: list[ScoreRequest]) -> list[JudgeScore]:
        self.expert.think([ThinkRequest(r.source_png, r.edited_png, r.instruction, r.instruction) for r in requests])
        return [JudgeScore(5.0, 5.0) for _ in requests]


class _Editor:
    name, model_id = "editor", "editor/v1"

    def edit(self, requests: list[Any]) -> list[bytes]:
        return [r.source_png + r.instruction.encode() for r in requests]


def test_usage_scopes_count_each_threads_calls_apart_and_follow_the_loops_judge_thread() -> None:
    answer = '{"is_satisfied": false, "reason": "no", "new_rewritten_prompt": "again"}'
    with StubOpenAIServer(default=Answer(answer, prompt_tokens=10, completion_tokens=2), delay_s=0.01) as srv:
        cfg = parse_params(
            {
                "expert": {
                    "kind": "openai",
                    "base_url": srv.base_url,
                    "model": "m",
                    "cache_dir": "",
                    "concurrency": 4,
                    "price_per_1k_input": 1.0,
                    "price_per_1k_output": 1.0,
                }
            }  # fmt: skip
        ).expert
        expert = OpenAIExpert(cfg)
        results: dict[int, Any] = {}

        def unit(n: int) -> None:  # n episodes: critiqued twice (the second answer repeats: stop), judged twice
            with usage_scope() as scope:
                starts = [EpisodeStart(f"u{n}-{k}", f"png{n}-{k}".encode(), "edit it", k) for k in range(n)]
                run_episodes(starts, _Editor(), expert, _ApiJudge(expert), 3)
            results[n] = scope.usage(like={"expert": expert.usage.as_dict()})

        try:
            threads = [threading.Thread(target=unit, args=(n,)) for n in (2, 5)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            total = expert.usage.as_dict()
        finally:
            expert.close()
    for n in (2, 5):
        assert results[n]["expert"]["calls"] == n * 2 + n * 2  # its own calls, none of the other thread's
        assert results[n]["expert"]["prompt_tokens"] == 10 * results[n]["expert"]["calls"]
        assert results[n]["expert"]["cost_usd"] == pytest.approx(0.012 * results[n]["expert"]["calls"])
        assert set(results[n]["expert"]) == set(total)  # every key, shaped as the client's totals
    assert total["calls"] == results[2]["expert"]["calls"] + results[5]["expert"]["calls"] == srv.calls
