"""Where the expert/judge answer cache lives: params' `cache_dir` under $EDITTHINKER_ANSWER_CACHE when set (the
KFP steps set it to the model-cache PVC, pipelines/platform.py), so a second pod on the same volume pays
nothing; under the working directory otherwise."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from editthinker.backends.openai_api import ANSWER_CACHE_ENV, OpenAIExpert, answer_cache_dir
from editthinker.config import parse_params
from editthinker.protocol import format_expert_answer
from editthinker.roles import ThinkRequest
from openai_stub import Answer, StubOpenAIServer


def png(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(buf, "PNG")
    return buf.getvalue()


def test_answer_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(ANSWER_CACHE_ENV, raising=False)
    assert answer_cache_dir(".cache/openai") == Path(".cache/openai")
    assert answer_cache_dir("") is None
    monkeypatch.setenv(ANSWER_CACHE_ENV, str(tmp_path / "pvc"))
    assert answer_cache_dir(".cache/openai") == tmp_path / "pvc" / ".cache/openai"
    assert answer_cache_dir(str(tmp_path / "abs")) == tmp_path / "abs"  # an absolute cache_dir is kept
    assert answer_cache_dir("") is None  # "" still disables the cache


def test_a_pod_on_the_same_volume_reuses_the_answers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    volume, pod_a, pod_b = tmp_path / "model-cache" / "answers", tmp_path / "pod-a", tmp_path / "pod-b"
    pod_a.mkdir()
    pod_b.mkdir()
    monkeypatch.setenv(ANSWER_CACHE_ENV, str(volume))
    answer = format_expert_answer(False, "the square is still red", "recolor the red square to blue")
    request = ThinkRequest(png((200, 20, 20)), png((20, 20, 200)), "make it blue", "make it blue")
    with StubOpenAIServer(default=Answer(answer)) as srv:
        cfg = parse_params({"expert": {"kind": "openai", "base_url": srv.base_url, "model": "stub"}}).expert
        assert cfg.cache_dir == ".cache/openai"  # the default, relative
        monkeypatch.chdir(pod_a)
        first = OpenAIExpert(cfg)
        verdicts = first.think([request])
        first.close()
        assert srv.calls == 1
        assert list(volume.joinpath(".cache/openai").rglob("*.json")) and not (pod_a / ".cache").exists()
        monkeypatch.chdir(pod_b)  # another pod, the same volume
        second = OpenAIExpert(cfg)
        assert second.think([request]) == verdicts and srv.calls == 1
        assert second.usage.cached_calls == 1
        second.close()
