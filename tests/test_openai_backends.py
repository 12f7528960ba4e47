"""The OpenAI-compatible expert and judge (backends/openai_api.py), offline on loopback.

(a) against a real `transformers serve` with a tiny random thinker built here (images and all);
(b) failure cases against a scripted stub server (tests/openai_stub.py): retries on 5xx and 429, timeouts,
malformed and empty answers, the disk cache, and the API key never leaking into logs or cache files.
"""

from __future__ import annotations

import io
import json
import logging
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from editthinker.backends.factory import build_expert, build_judge
from editthinker.backends.openai_api import (
    ChatRequest,
    JudgeError,
    OpenAICallError,
    OpenAIChatClient,
    OpenAIExpert,
    OpenAIJudge,
    parse_judge_answer,
)
from editthinker.backends.synthetic import SyntheticEditor, SyntheticJudge
from editthinker.config import ConfigError, ThinkerModelConfig, parse_params
from editthinker.loop import EpisodeStart, run_episodes
from editthinker.protocol import FormatError, format_expert_answer
from editthinker.roles import ScoreRequest, ThinkRequest
from editthinker.world.scene import render_png
from editthinker.world.tasks import make_task
from openai_stub import Answer, Hang, Raw, Status, StubOpenAIServer

OK = format_expert_answer(False, "the square is still red", "recolor the red square to blue")
SECRET = "sk-test-DO-NOT-LEAK-8f3a1c"
KEY_ENV = "EDITTHINKER_TEST_OPENAI_KEY"


def png(colour: tuple[int, int, int] = (200, 20, 20)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(buf, "PNG")
    return buf.getvalue()


def think_req(instruction: str = "make the square blue") -> ThinkRequest:
    return ThinkRequest(png(), png((20, 20, 200)), instruction, instruction)


def api_cfg(section: str, base_url: str, tmp_path: Path, **kw):
    d = {
        "kind": "openai",
        "base_url": base_url,
        "model": "stub-model",
        "api_key_env": KEY_ENV,
        "timeout_s": 5.0,
        "max_retries": 2,
        "concurrency": 4,
        "cache_dir": str(tmp_path / "cache"),
        **kw,
    }
    return getattr(parse_params({section: d}), section)


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)


# -- config --------------------------------------------------------------------------------------------
def test_config_kinds():
    with pytest.raises(ConfigError, match="kind openai needs a model"):
        parse_params({"expert": {"kind": "openai"}})
    with pytest.raises(ConfigError, match="only apply to kind: openai"):
        parse_params({"judge": {"kind": "synthetic", "base_url": "http://x/v1"}})
    with pytest.raises(ConfigError, match="api_key_env"):
        parse_params({"expert": {"kind": "openai", "model": "m", "api_key_env": "sk-not-a-name!"}})
    assert parse_params({}).expert.kind == "synthetic"


def test_registry_builds_openai_roles(tmp_path):
    with StubOpenAIServer() as srv:
        expert = build_expert(api_cfg("expert", srv.base_url, tmp_path), seed=0)
        judge = build_judge(api_cfg("judge", srv.base_url, tmp_path))
        assert isinstance(expert, OpenAIExpert) and isinstance(judge, OpenAIJudge)
        assert expert.model_id == "openai:stub-model"
        expert.close()
        judge.close()


# -- (b) stub server: retries, timeouts, bad answers, cache, secrets -------------------------------------
def test_500_then_200_is_retried(tmp_path):
    with StubOpenAIServer([Status(500), Answer(OK)]) as srv:
        expert = OpenAIExpert(api_cfg("expert", srv.base_url, tmp_path))
        [v] = expert.think([think_req()])
        expert.close()
    assert v.format_ok and not v.satisfied and v.answer == "recolor the red square to blue"
    assert srv.calls == 2
    assert expert.usage.as_dict()["calls"] == 1 and expert.usage.failed_calls == 0
    assert expert.usage.as_dict()["retries"] == 1  # the SDK's retry is counted
    # the strict json_schema is asked for, and both images travel as data URLs
    body = srv.requests[-1]
    assert body["response_format"]["type"] == "json_schema"
    urls = [p["image_url"]["url"] for p in body["messages"][1]["content"] if p["type"] == "image_url"]
    assert len(urls) == 2 and all(u.startswith("data:image/png;base64,") for u in urls)


def test_429_with_retry_after_is_retried(tmp_path):
    with StubOpenAIServer([Status(429, {"Retry-After": "0.3"}), Answer(OK)]) as srv:
        expert = OpenAIExpert(api_cfg("expert", srv.base_url, tmp_path))
        t0 = time.perf_counter()
        [v] = expert.think([think_req()])
        dt = time.perf_counter() - t0
        expert.close()
    assert v.format_ok and srv.calls == 2
    assert dt >= 0.3  # waited as told


def test_hang_times_out_with_a_clear_error_after_max_retries(tmp_path):
    with StubOpenAIServer(default=Hang(3.0)) as srv:
        client = OpenAIChatClient(api_cfg("expert", srv.base_url, tmp_path, timeout_s=0.3, max_retries=1), "expert")
        t0 = time.perf_counter()
        with pytest.raises(OpenAICallError, match=r"expert call c1 .*1 retries.*Timeout"):
            client.complete(ChatRequest("c1", [{"role": "user", "content": "hi"}]))
        assert time.perf_counter() - t0 < 5
        assert srv.calls == 2  # the first try and one retry
        assert client.usage.failed_calls == 1 and client.usage.retries == 1
        client.close()
        # as the expert, the failure is raised: it never becomes a format failure (API faults never change data)
        expert = OpenAIExpert(api_cfg("expert", srv.base_url, tmp_path, timeout_s=0.3, max_retries=0))
        with pytest.raises(OpenAICallError, match=r"expert: 1 of 1 calls failed .*expert call #0 .*Timeout"):
            expert.think([think_req()])
        expert.close()
    assert expert.usage.as_dict()["failed_calls"] == 1 and expert.usage.as_dict()["retries"] == 0


@pytest.mark.parametrize(
    "action, error",
    [
        (Answer('{"is_satisfied": false, "reason": "x", "new_rewritten_prompt": '), "not JSON"),
        (Answer(""), "not JSON"),
        (Answer('{"is_satisfied": "no", "reason": "x", "new_rewritten_prompt": "y"}'), "is_satisfied"),
    ],
    ids=["malformed-json", "empty", "wrong-type"],
)
def test_bad_answers_are_format_failures(tmp_path, action, error):
    with StubOpenAIServer([action]) as srv:
        expert = OpenAIExpert(api_cfg("expert", srv.base_url, tmp_path, max_retries=0))
        [v] = expert.think([think_req()])
        expert.close()
    assert not v.format_ok and error in v.error


def test_a_reply_that_is_not_a_chat_completion_is_a_failed_call_not_an_answer(tmp_path):
    with StubOpenAIServer([Raw("<html>bad gateway</html>")]) as srv:
        expert = OpenAIExpert(api_cfg("expert", srv.base_url, tmp_path, max_retries=0))
        with pytest.raises(OpenAICallError, match="not a chat completion"):
            expert.think([think_req()])
        expert.close()
    assert expert.usage.failed_calls == 1 and expert.usage.calls == 0


def test_a_completion_is_read_from_its_json_as_the_sdk_model_reads_it():
    """The client reads the answer's JSON itself (cheaper than the SDK's typed model): the same fields, the same
    defaults, and anything else is an error the call reports."""
    from openai.types.chat import ChatCompletion

    from editthinker.backends.openai_api import _read

    full = {"id": "x", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}  # fmt: skip
    no_content = {**full, "choices": [{**full["choices"][0], "message": {"role": "assistant", "content": None}}]}
    for answer in (full, no_content, {**full, "choices": []}, {k: v for k, v in full.items() if k != "usage"}):
        typed = ChatCompletion.model_validate(answer)
        choice = typed.choices[0] if typed.choices else None
        want = ((choice.message.content if choice else None) or "", str(choice.finish_reason) if choice else
                "no_choices", typed.usage.prompt_tokens if typed.usage else 0,
                typed.usage.completion_tokens if typed.usage else 0)  # fmt: skip
        assert _read(answer) == want
    bad_choices = ({"0": 1}, ["text"], [{"message": "text"}], [{"message": {"content": 5}}])
    for bad in ("<html>", [full], {"id": "x"}, *({**full, "choices": c} for c in bad_choices)):
        with pytest.raises((TypeError, ValueError, KeyError)):
            _read(bad)


def test_cache_second_identical_call_makes_no_request(tmp_path):
    with StubOpenAIServer() as srv:
        cfg = api_cfg("expert", srv.base_url, tmp_path, price_per_1k_input=2.0, price_per_1k_output=8.0)
        expert = OpenAIExpert(cfg)
        first = expert.think([think_req()])
        assert srv.calls == 1
        second = expert.think([think_req()])
        assert srv.calls == 1 and second == first
        u = expert.usage.as_dict()
        assert (u["calls"], u["cached_calls"], u["prompt_tokens"], u["completion_tokens"]) == (1, 1, 100, 20)
        assert u["cost_usd"] == pytest.approx(100 / 1000 * 2.0 + 20 / 1000 * 8.0)
        # identical requests in one batch go out once
        expert.think([think_req("other"), think_req("other")])
        assert srv.calls == 2
        expert.close()
        # a rerun (a new process, the same cache dir) pays nothing
        rerun = OpenAIExpert(cfg)
        assert rerun.think([think_req()]) == first and srv.calls == 2
        assert rerun.usage.as_dict()["cost_usd"] == 0 and rerun.usage.cached_calls == 1
        # a different image is a different request
        rerun.think([ThinkRequest(png((0, 255, 0)), png(), "make the square blue", "make the square blue")])
        assert srv.calls == 3
        rerun.close()


def test_api_key_never_in_logs_cache_or_errors(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    with StubOpenAIServer([Status(500), Answer(OK), Status(503), Status(503)]) as srv:
        expert = OpenAIExpert(api_cfg("expert", srv.base_url, tmp_path, max_retries=1))
        ok = expert.think([think_req()])
        with pytest.raises(OpenAICallError) as bad:
            expert.think([think_req("another instruction")])
        expert.close()
    assert ok[0].format_ok
    assert srv.auth_headers[0] == f"Bearer {SECRET}"  # the key was used ...
    assert SECRET not in caplog.text  # ... but never logged,
    assert "DEBUG" in {r.levelname for r in caplog.records}  # (debug logging was on)
    assert SECRET not in str(bad.value) and SECRET not in repr(bad.value.__cause__)  # never in an error,
    files = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert files
    for p in files:  # and never in a cache file
        assert SECRET not in p.read_text()


def test_missing_key_for_the_openai_api_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    cfg = api_cfg("expert", "https://api.openai.com/v1", tmp_path)
    with pytest.raises(OpenAICallError, match=KEY_ENV):
        OpenAIExpert(cfg)


def test_server_without_response_format_falls_back(tmp_path):
    reject = Status(400, body='{"error": {"message": "response_format is not supported", "type": "invalid"}}')
    with StubOpenAIServer([reject, Answer(OK)]) as srv:
        expert = OpenAIExpert(api_cfg("expert", srv.base_url, tmp_path))
        [v] = expert.think([think_req()])
        expert.close()
    assert v.format_ok and srv.calls == 2
    assert "response_format" in srv.requests[0] and "response_format" not in srv.requests[1]


def test_judge_viescore(tmp_path):
    good = json.dumps({"reasoning": "ok", "editing_success": 9, "over_editing": 7, "naturalness": 8, "artifacts": 10})
    with StubOpenAIServer([Answer(good)]) as srv:
        judge = OpenAIJudge(api_cfg("judge", srv.base_url, tmp_path))
        s = judge.score(png(), png((0, 0, 255)), "make it blue", None)
        judge.close()
    assert (s.semantic, s.quality) == (7.0, 8.0) and s.overall == pytest.approx((7 * 8) ** 0.5)
    assert srv.requests[0]["response_format"]["json_schema"]["name"] == "viescore"


def test_judge_unparsable_raises_naming_the_call(tmp_path):
    with StubOpenAIServer(default=Answer("I think it is fine.")) as srv:
        judge = OpenAIJudge(api_cfg("judge", srv.base_url, tmp_path, format_retries=1))
        with pytest.raises(JudgeError, match=r"judge call #0 .*'make it blue'.*after 2 attempts.*not JSON"):
            judge.score(png(), png(), "make it blue", None)
        assert srv.calls == 2  # asked again once
        judge.close()
    with StubOpenAIServer(default=Status(500)) as srv:
        judge = OpenAIJudge(api_cfg("judge", srv.base_url, tmp_path, max_retries=0))
        with pytest.raises(JudgeError, match=r"judge call #0 .*InternalServerError"):
            judge.score(png(), png(), "make it blue", None)
        judge.close()


def test_judge_scores_a_batch_concurrently_in_order(tmp_path):
    """score_many puts every call of the batch in flight at once (each call waits at a barrier until all four
    have arrived: one at a time would never pass it), and gives the scores in request order."""
    import asyncio

    def answer(body):
        text = body["messages"][1]["content"][-1]["text"]
        n = int(text.rsplit(" ", 1)[-1])
        return Answer(json.dumps({"reasoning": "r", "editing_success": n, "over_editing": 10, "naturalness": 9,
                                  "artifacts": 9}))  # fmt: skip

    with StubOpenAIServer(respond=answer) as srv:
        judge = OpenAIJudge(api_cfg("judge", srv.base_url, tmp_path, concurrency=4, cache_dir=""))
        barrier = judge.client.run_sync(_make_barrier(4))
        inner = judge.client.acomplete

        async def gathered(req):
            await asyncio.wait_for(barrier.wait(), 20)
            return await inner(req)

        judge.client.acomplete = gathered  # type: ignore[method-assign]
        scores = judge.score_many([ScoreRequest(png(), png((0, 0, 255)), f"make it blue {n}") for n in (3, 1, 4, 2)])
        judge.close()
    assert [s.semantic for s in scores] == [3.0, 1.0, 4.0, 2.0] and srv.calls == 4


async def _make_barrier(n: int):
    import asyncio

    return asyncio.Barrier(n)


def test_judge_batch_failure_raises_the_first_failed_call(tmp_path):
    good = json.dumps({"reasoning": "ok", "editing_success": 9, "over_editing": 7, "naturalness": 8, "artifacts": 10})
    with StubOpenAIServer([Answer(good), Status(500)], default=Answer(good)) as srv:
        judge = OpenAIJudge(api_cfg("judge", srv.base_url, tmp_path, max_retries=0, concurrency=1, cache_dir=""))
        with pytest.raises(JudgeError, match=r"judge call #1 .*InternalServerError"):
            judge.score_many([ScoreRequest(png(), png(), f"make it blue {i}") for i in range(3)])
        judge.close()
    assert srv.calls == 3  # every call was awaited before the failure was raised


def test_parse_judge_answer_is_strict():
    with pytest.raises(FormatError, match="artifacts"):
        parse_judge_answer('{"editing_success": 1, "over_editing": 2, "naturalness": 3}')
    with pytest.raises(FormatError, match="outside 0-10"):
        parse_judge_answer('{"editing_success": 11, "over_editing": 2, "naturalness": 3, "artifacts": 4}')
    s = parse_judge_answer(
        '```json\n{"editing_success": 10, "over_editing": 10, "naturalness": 4, "artifacts": 6}\n```'
    )
    assert (s.semantic, s.quality) == (10.0, 4.0)


def test_generation_loop_survives_a_flaky_server(tmp_path):
    """run_episodes with the API expert, a synthetic editor and judge: bad answers cost turns, never the run;
    transient errors are retried."""
    script = [
        Status(500),
        Answer(OK),
        Answer("not json"),
        Answer(""),
        Status(429, {"retry-after-ms": "50"}),
        Answer(OK),
    ]
    done = format_expert_answer(True, "done", "")
    with StubOpenAIServer(script, default=Answer(done)) as srv:
        expert = OpenAIExpert(api_cfg("expert", srv.base_url, tmp_path, max_retries=1, concurrency=2))
        editor = SyntheticEditor("painter", "painter", 64)
        tasks = [make_task(5, i, 2, 3, {"canonical": 1.0}) for i in range(6)]
        starts = [
            EpisodeStart(t.task_id, render_png(t.source, 64), t.instruction, i, t.target.to_json())
            for i, t in enumerate(tasks)
        ]
        episodes = run_episodes(starts, editor, expert, SyntheticJudge(), max_turns=3)
        expert.close()
    assert len(episodes) == 6 and all(e.stop_reason for e in episodes)
    assert sum(e.format_failures for e in episodes) >= 1
    assert expert.usage.calls >= 6 and expert.usage.retries == 2 and expert.usage.failed_calls == 0


# -- (a) a real OpenAI-compatible server: transformers serve with a tiny thinker -------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def tf_server(tmp_path_factory):
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:  # pragma: no cover
        pytest.skip(f"transformers[serving] extras not installed: {exc}")
    from editthinker.models.tiny_vlm import MODEL_KIND, build_tiny_thinker
    from editthinker.models.vlm import save_thinker

    path = tmp_path_factory.mktemp("tiny-thinker")
    model, processor = build_tiny_thinker(ThinkerModelConfig(hidden_size=64, num_layers=2, num_heads=4), seed=3)
    save_thinker(model, processor, path, MODEL_KIND)
    port = _free_port()
    log = open(path / "serve.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "editthinker.backends.serve", "--model", str(path), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"transformers serve exited with {proc.returncode}: {(path / 'serve.log').read_text()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"transformers serve not ready in 120 s: {(path / 'serve.log').read_text()}")
            time.sleep(0.25)
        yield f"http://127.0.0.1:{port}/v1", str(path)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()


@pytest.mark.xdist_group("subprocess-heavy")
def test_real_server_expert_and_judge(tf_server, tmp_path, caplog):
    base_url, model = tf_server
    caplog.set_level(logging.DEBUG)
    cfg = api_cfg("expert", base_url, tmp_path, model=model, max_tokens=16, timeout_s=60.0)
    expert = OpenAIExpert(cfg)
    verdicts = expert.think([think_req("make the square blue"), think_req("move the circle left")])
    expert.close()
    assert len(verdicts) == 2
    for v in verdicts:
        assert isinstance(v.raw, str)
        # a random tiny model does not write the expert's JSON: a format failure, not an exception
        assert not v.format_ok and v.error
    u = expert.usage.as_dict()
    assert u["calls"] == 2 and u["failed_calls"] == 0
    assert u["prompt_tokens"] > 2 * 100  # the two images were read (text alone is a few dozen tokens)
    assert 0 < u["completion_tokens"] <= 2 * 16 or u["completion_tokens"] == 0
    assert SECRET not in caplog.text
    # the rerun is served from the cache
    again = OpenAIExpert(cfg)
    assert again.think([think_req("make the square blue")]) == verdicts[:1]
    assert again.usage.cached_calls == 1 and again.usage.calls == 0
    again.close()
    # the judge: an unparsable answer from a real server is a JudgeError naming the call
    judge = OpenAIJudge(api_cfg("judge", base_url, tmp_path, model=model, max_tokens=16, format_retries=0))
    with pytest.raises(JudgeError, match="judge call #0"):
        judge.score(png(), png((0, 0, 255)), "make it blue", None)
    assert judge.usage.calls == 1
    judge.close()


def test_generate_stage_records_api_usage_beside_the_data(tmp_path):
    """The generate stage with an API expert: its calls, tokens and cost land in the manifest, not the shards."""
    from editthinker.records import read_manifest
    from editthinker.stages import generate

    done = format_expert_answer(True, "done", "")
    with StubOpenAIServer([], default=Answer(done)) as srv:
        expert = api_cfg("expert", srv.base_url, tmp_path, price_per_1k_input=1.0, price_per_1k_output=2.0)
        params = parse_params(
            {"expert": expert.model_dump(mode="json"), "generate": {"num_tasks": 4, "max_turns": 2, "shards": 1}}
        )
        manifest = generate.run(params, tmp_path / "traj")
    usage = read_manifest(tmp_path / "traj")["api_usage"]
    assert set(usage) == {"expert"}  # the synthetic judge calls no API
    assert usage["expert"]["calls"] == 4 and usage["expert"]["prompt_tokens"] > 0
    assert usage["expert"]["cost_usd"] > 0
    assert manifest["rows"] == 4  # every expert answer was "satisfied": one turn each


def test_evaluate_stage_records_api_judge_usage(tmp_path):
    """evaluate with an API judge: its calls and tokens are in summary.json; the synthetic expert has none."""
    import json

    from editthinker.models.tiny_vlm import MODEL_KIND, build_tiny_thinker
    from editthinker.models.vlm import save_thinker
    from editthinker.stages import evaluate

    scores = json.dumps({"editing_success": 8, "over_editing": 9, "naturalness": 9, "artifacts": 10, "reason": "ok"})
    model, processor = build_tiny_thinker(ThinkerModelConfig(hidden_size=32, num_heads=2, max_new_tokens=8), seed=0)
    save_thinker(model, processor, tmp_path / "ckpt", MODEL_KIND)
    with StubOpenAIServer([], default=Answer(scores)) as srv:
        judge = api_cfg("judge", srv.base_url, tmp_path)
        params = parse_params(
            {
                "judge": judge.model_dump(mode="json"),
                "thinker": {"hidden_size": 32, "num_heads": 2, "max_new_tokens": 8},
                "evaluate": {"num_tasks": 2, "max_turns": 2},
            }
        )
        summary = evaluate.run(params, tmp_path / "ckpt", tmp_path / "ckpt", tmp_path / "eval")
    usage = summary["api_usage"]
    assert set(usage) == {"judge"} and usage["judge"]["calls"] > 0 and usage["judge"]["prompt_tokens"] > 0
    assert json.loads((tmp_path / "eval/summary.json").read_text())["api_usage"] == usage
