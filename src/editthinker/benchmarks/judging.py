"""Judge calls of the benchmark scorers: concurrent, cached on disk, costed, never guessed.

Calls go through `OpenAIChatClient` (backends/openai_api.py): at most `concurrency` in flight, the SDK's
retries with backoff on 429/5xx/timeouts, answers cached by the sha256 of the request (images included), so
a rescore after a crash or after new images only pays for what changed, and calls/tokens/cost counted. An
answer the benchmark's parser rejects is asked again (`format_retries` times, each its own cache entry);
a call that still has no parsable answer, or that failed for good, is an `Outcome` with `scores=None` and the
reason: the scorer reports the item's score as missing. Nothing is ever replaced by a default.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from editthinker.backends.openai_api import ChatRequest, OpenAICallError, OpenAIChatClient
from editthinker.benchmarks.base import JudgeCall
from editthinker.config import BenchmarkJudgeConfig, OpenAIAPIConfig
from editthinker.protocol import FormatError

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    item_id: str
    name: str
    scores: dict[str, float] | None
    answers: list[str] = field(default_factory=list)  # every answer received, in order
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"call": self.name, "scores": self.scores, "answers": self.answers, "error": self.error}


def judge_api_config(cfg: BenchmarkJudgeConfig, model: str) -> OpenAIAPIConfig:
    """The client settings of one benchmark's judge: the shared judge section with that benchmark's model."""
    fields = cfg.model_dump(exclude={"format_retries"})
    fields["model"] = cfg.model or model
    return OpenAIAPIConfig(**fields)


def open_judge(cfg: BenchmarkJudgeConfig, model: str) -> OpenAIChatClient:
    return OpenAIChatClient(judge_api_config(cfg, model), "benchmark-judge")


async def _one(client: OpenAIChatClient, item_id: str, call: JudgeCall, format_retries: int) -> Outcome:
    out = Outcome(item_id, call.name, None)
    call_id = f"{item_id}/{call.name}"
    for attempt in range(format_retries + 1):
        try:
            res = await client.acomplete(ChatRequest(call_id, call.messages, attempt=attempt))
        except OpenAICallError as exc:
            out.error = f"api error: {exc}"
            log.warning("judge call %s failed: %s", call_id, exc)
            return out
        out.answers.append(res.text)
        try:
            out.scores = call.parse(res.text)
            out.error = ""
            return out
        except FormatError as exc:
            out.error = f"unparsable answer: {exc} (finish_reason {res.finish_reason})"
            log.warning("judge call %s attempt %d: %s", call_id, attempt + 1, out.error)
    return out


def judge_calls(client: OpenAIChatClient, calls: list[tuple[str, JudgeCall]], format_retries: int) -> list[Outcome]:
    """One Outcome per (item id, call), same order; all calls run concurrently (the client bounds them)."""

    async def go() -> list[Outcome]:
        return list(await asyncio.gather(*(_one(client, i, c, format_retries) for i, c in calls)))

    return client.run_sync(go())
