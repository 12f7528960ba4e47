"""Expert and judge over an OpenAI-compatible chat API: GPT-4.1, a vLLM server or `transformers serve`.

- One client (`OpenAIChatClient`) per role: `AsyncOpenAI` on a private event-loop thread, at most
  `concurrency` requests in flight (a semaphore), a timeout per attempt and the SDK's own retries with
  exponential backoff on 408/409/429/5xx, connection errors and timeouts (a `Retry-After` header is honoured).
- A disk cache keyed by the sha256 of the request (base URL, model, messages with the image bytes, sampling
  params), so a rerun never pays twice. Only the answer and its token counts are stored. A relative `cache_dir`
  lives under $EDITTHINKER_ANSWER_CACHE when that is set (the KFP steps set it to a folder of the model-cache
  PVC, so answers outlive the pod and every generation shard shares them), else under the working directory.
- Token and cost accounting in a `Usage` accumulator that a stage can write into its lineage or metrics:
  calls answered, calls from the cache, retries the SDK made (each HTTP attempt after the first of a call, seen
  by its `x-stainless-retry-count` header) and calls that failed after their retries.
- The API key is read from the environment variable NAMED in params (`api_key_env`); its value is handed to
  the SDK and nowhere else: never logged, never hashed into a cache key, never written to a file.

API faults never change data: a call that still fails after its retries raises `OpenAICallError` (naming the
role, the call and the model), from the expert as from the judge; it never turns into an answer.
The expert answers the method's JSON {is_satisfied, reason, new_rewritten_prompt}; an unparsable answer is a
Verdict with format_ok False (the loop counts it as a format failure, the run goes on).
The judge follows VIEScore: semantic consistency SC = min(editing success, over-editing) and perceptual
quality PQ = min(naturalness, artifacts), each 0-10, overall sqrt(SC * PQ); an answer still unparsable after
`format_retries` re-asks raises `JudgeError` naming the call (the stage decides what to do).
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import hashlib
import json
import logging
import os
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from editthinker.config import JudgeConfig, OpenAIAPIConfig
from editthinker.protocol import FormatError, Verdict, load_json_object, parse_expert_answer
from editthinker.roles import JudgeScore, ScoreRequest, ThinkRequest
from editthinker.usage import record

log = logging.getLogger(__name__)
T = TypeVar("T")

# A key is only required by hosts that check it; local servers (vLLM, transformers serve) accept any string.
_NO_KEY = "no-key-set"


class OpenAICallError(RuntimeError):
    """A call that failed for good (after the SDK's retries): the message names the role, call and model."""


class JudgeError(OpenAICallError):
    """The judge could not produce a score for one call."""


# -- accounting ------------------------------------------------------------------------------------------
@dataclass
class Usage:
    """Calls, tokens and cost of one role's client. Cached answers cost nothing and are counted apart. Each count
    also goes to the `usage_scope`s of the context the call was made in."""

    calls: int = 0  # answered by the server
    cached_calls: int = 0  # answered from the disk cache
    retries: int = 0  # HTTP attempts after the first of a call (the SDK's retries)
    failed_calls: int = 0  # failed after retries
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    _role: str = field(default="", repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def _add(self, **deltas: float) -> None:
        with self._lock:
            for k, v in deltas.items():
                setattr(self, k, getattr(self, k) + v)
        record(self._role, **deltas)

    def add_call(self, prompt_tokens: int, completion_tokens: int, price_in: float, price_out: float) -> None:
        cost = prompt_tokens / 1000 * price_in + completion_tokens / 1000 * price_out
        self._add(calls=1, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, cost_usd=cost)

    def add_cached(self) -> None:
        self._add(cached_calls=1)

    def add_failure(self) -> None:
        self._add(failed_calls=1)

    def add_retry(self) -> None:
        self._add(retries=1)

    def as_dict(self) -> dict[str, int | float]:
        with self._lock:
            d: dict[str, int | float] = {f.name: getattr(self, f.name) for f in fields(self) if f.name[0] != "_"}
        d["cost_usd"] = round(float(d["cost_usd"]), 6)
        return d


# -- cache -----------------------------------------------------------------------------------------------
ANSWER_CACHE_ENV = "EDITTHINKER_ANSWER_CACHE"


def answer_cache_dir(cache_dir: str) -> Path | None:
    """The folder of the answer cache for params' `cache_dir`: None for "" (no cache), an absolute path as
    given, a relative one under $EDITTHINKER_ANSWER_CACHE when set, else under the working directory."""
    if not cache_dir:
        return None
    root = os.environ.get(ANSWER_CACHE_ENV, "")
    return Path(root) / cache_dir if root else Path(cache_dir)  # (an absolute cache_dir wins over root)


class ResponseCache:
    """One JSON file per request, named by the request's sha256; written to a temporary name then renamed."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            d = json.loads(self._path(key).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return d if isinstance(d, dict) and isinstance(d.get("text"), str) else None

    def put(self, key: str, entry: dict[str, Any]) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}-{threading.get_ident()}")
        tmp.write_text(json.dumps(entry, sort_keys=True))
        tmp.replace(path)


# -- client ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChatRequest:
    call_id: str  # names the call in errors and logs
    messages: list[dict[str, Any]]
    schema_name: str = ""
    schema: dict[str, Any] | None = None
    attempt: int = 0  # > 0: a re-ask after an unparsable answer (its own cache entry)


@dataclass(frozen=True)
class ChatResult:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cached: bool


def png_data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


_OPEN_CLIENTS: set[OpenAIChatClient] = set()  # held until closed: an aiohttp session must be closed, not collected


@atexit.register
def _close_open_clients() -> None:
    """Close the clients their owners left open (at exit the loop threads still run)."""
    for client in list(_OPEN_CLIENTS):
        with contextlib.suppress(Exception):
            client.close()


class OpenAIChatClient:
    """Chat completions through the openai SDK on an event loop of its own thread, at `cfg.concurrency`. Its HTTP
    transport is aiohttp (the SDK's DefaultAioHttpClient): at 16 requests in flight httpx's connection pool costs
    about twice the client CPU per call (bench/bench.py's API figures)."""

    def __init__(self, cfg: OpenAIAPIConfig, role: str):
        from openai import AsyncOpenAI, DefaultAioHttpClient

        self.cfg = cfg
        self.role = role
        key = os.environ.get(cfg.api_key_env, "")
        if not key and "api.openai.com" in cfg.base_url:
            raise OpenAICallError(f"{role}: the environment variable {cfg.api_key_env} holding the API key is not set")
        self.usage = Usage(_role=role)
        cache_dir = answer_cache_dir(cfg.cache_dir)
        self.cache = ResponseCache(cache_dir) if cache_dir else None
        self._response_format_ok = cfg.response_format != "none"
        self._client = AsyncOpenAI(
            base_url=cfg.base_url,
            api_key=key or _NO_KEY,
            timeout=cfg.timeout_s,
            max_retries=cfg.max_retries,
            http_client=DefaultAioHttpClient(event_hooks={"request": [self._on_request]}),
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"openai-{role}", daemon=True)
        self._thread.start()
        self._sem = asyncio.Semaphore(cfg.concurrency)
        self._closed = False
        self._inflight: dict[str, asyncio.Future[ChatResult]] = {}
        _OPEN_CLIENTS.add(self)

    async def _on_request(self, request: Any) -> None:
        """Every HTTP attempt passes here; the SDK numbers its retries in a header."""
        try:
            retry = int(request.headers.get("x-stainless-retry-count", "0"))
        except ValueError:
            retry = 0
        if retry > 0:
            self.usage.add_retry()

    # the event loop lives on its own thread so a sync caller (the loop, a stage) can submit batches
    def run_sync(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise OpenAICallError(f"{self.role}: the client is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        if self._closed:
            return
        _OPEN_CLIENTS.discard(self)
        self.run_sync(self._client.close())
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def __enter__(self) -> OpenAIChatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _body(self, req: ChatRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.cfg.model,
            "messages": req.messages,
            "temperature": self.cfg.temperature,
            "max_tokens": self.cfg.max_tokens,
        }
        if self.cfg.response_format == "json_schema" and req.schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": req.schema_name or "answer", "strict": True, "schema": req.schema},
            }
        elif self.cfg.response_format != "none":
            body["response_format"] = {"type": "json_object"}
        return body

    def cache_key(self, req: ChatRequest) -> str:
        """sha256 of what determines the answer; the API key is not part of it."""
        material = {"base_url": self.cfg.base_url.rstrip("/"), "body": self._body(req), "attempt": req.attempt}
        return hashlib.sha256(json.dumps(material, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    async def acomplete(self, req: ChatRequest) -> ChatResult:
        """One answer: from the cache, from an identical request already in flight, or from the server."""
        key = self.cache_key(req) if self.cache is not None else ""
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            self.usage.add_cached()
            return ChatResult(hit["text"], str(hit.get("finish_reason", "")), 0, 0, cached=True)
        if self.cache is not None and key in self._inflight:
            res = await asyncio.shield(self._inflight[key])
            self.usage.add_cached()
            return ChatResult(res.text, res.finish_reason, 0, 0, cached=True)
        task = asyncio.ensure_future(self._request(req, key))
        if self.cache is not None:
            self._inflight[key] = task
            task.add_done_callback(lambda _: self._inflight.pop(key, None))
        return await task

    async def _post(self, body: dict[str, Any]) -> Any:
        """POST /chat/completions through the SDK's documented custom-request path: the same auth, timeout
        and retries as `chat.completions.create`, without re-walking our (already plain JSON) body through the
        SDK's typed-params transform, and the answer as the JSON it is (`cast_to=object`): building the SDK's
        typed ChatCompletion costs more client CPU than the HTTP exchange at 16 calls in flight. `_read` checks it."""
        return await self._client.post("/chat/completions", body=body, cast_to=object)

    async def _request(self, req: ChatRequest, key: str) -> ChatResult:
        import openai

        body = self._body(req)
        if not self._response_format_ok:
            body.pop("response_format", None)
        async with self._sem:
            try:
                try:
                    resp = await self._post(body)
                except openai.BadRequestError as exc:
                    # a server without structured output: ask once more without it, and from now on
                    if "response_format" not in body or "response_format" not in str(exc).lower():
                        raise
                    log.warning("%s: server rejected response_format; asking without it from now on", self.role)
                    self._response_format_ok = False
                    body.pop("response_format")
                    resp = await self._post(body)
            except openai.APIError as exc:
                self.usage.add_failure()
                raise OpenAICallError(
                    f"{self.role} call {req.call_id} (model {self.cfg.model!r} at {self.cfg.base_url}) failed "
                    f"after up to {self.cfg.max_retries} retries: {type(exc).__name__}: {exc}"
                ) from exc
            except ValueError as exc:  # a 200 whose body is not JSON (the SDK does not retry it)
                self.usage.add_failure()
                raise OpenAICallError(
                    f"{self.role} call {req.call_id} (model {self.cfg.model!r} at {self.cfg.base_url}): the server's "
                    f"answer is not a chat completion: {type(exc).__name__}: {exc}"
                ) from exc
        try:
            text, finish, pt, ct = _read(resp)
        except (TypeError, ValueError, KeyError) as exc:  # e.g. a body that is not JSON, or not a completion
            self.usage.add_failure()
            raise OpenAICallError(
                f"{self.role} call {req.call_id} (model {self.cfg.model!r} at {self.cfg.base_url}): the server's "
                f"answer is not a chat completion ({exc}): {str(resp)[:200]!r}"
            ) from None
        self.usage.add_call(pt, ct, self.cfg.price_per_1k_input, self.cfg.price_per_1k_output)
        if self.cache is not None:
            entry = {"text": text, "finish_reason": finish, "prompt_tokens": pt, "completion_tokens": ct}
            self.cache.put(key, {**entry, "model": self.cfg.model})
        return ChatResult(text, finish, pt, ct, cached=False)

    async def _gather(self, reqs: list[ChatRequest]) -> list[ChatResult | BaseException]:
        return list(await asyncio.gather(*(self.acomplete(r) for r in reqs), return_exceptions=True))

    def complete_many(self, reqs: list[ChatRequest]) -> list[ChatResult | BaseException]:
        """One result per request, same order; a failed call is its exception (OpenAICallError), not raised."""
        return self.run_sync(self._gather(reqs))

    def complete(self, req: ChatRequest) -> ChatResult:
        return self.run_sync(self.acomplete(req))


def _read(answer: Any) -> tuple[str, str, int, int]:
    """(text, finish reason, prompt tokens, completion tokens) of a chat completion's JSON, as the SDK's
    ChatCompletion reads them (no choice: "" and "no_choices"; no usage: 0 tokens); anything that is not a
    completion's JSON raises TypeError, ValueError or KeyError."""
    if not isinstance(answer, dict):
        raise TypeError("not a JSON object")
    choices = answer["choices"]
    if not isinstance(choices, list):
        raise TypeError("its choices are not a list")
    choice = choices[0] if choices else None
    if choice is None:
        text, finish = "", "no_choices"
    else:
        message = choice["message"] if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            raise TypeError("its first choice has no message object")
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            raise TypeError("its message content is not text")
        text, finish = content or "", str(choice.get("finish_reason"))
    usage = answer.get("usage") or {}
    return text, finish, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


# -- expert ----------------------------------------------------------------------------------------------
EXPERT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "is_satisfied": {"type": "boolean"},
        "reason": {"type": "string"},
        "new_rewritten_prompt": {"type": "string"},
    },
    "required": ["is_satisfied", "reason", "new_rewritten_prompt"],
    "additionalProperties": False,
}

EXPERT_SYSTEM = (
    "You are an expert reviewer of instruction-based image edits. An image editor was given a SOURCE image and "
    "an instruction, and produced an EDITED image. Judge whether the edited image fully and faithfully carries "
    "out the ORIGINAL instruction while leaving everything else unchanged and free of artifacts. If it does, "
    "answer is_satisfied true and repeat the previous instruction as new_rewritten_prompt. If it does not, answer "
    "is_satisfied false, say in reason what is wrong, and write new_rewritten_prompt: a clearer, more explicit "
    "instruction for the same editor, to be applied to the SOURCE image, that achieves the original intent. "
    'Answer with JSON only: {"is_satisfied": bool, "reason": str, "new_rewritten_prompt": str}.'
)


def expert_messages(req: ThinkRequest) -> list[dict[str, Any]]:
    """The expert's prompt: source image, previous edit, then the original and the previous instruction.

    The privileged `reference` of the synthetic world is not sent: a real expert sees what the thinker sees.
    """
    text = (
        f"Original instruction: {req.original_instruction}\n"
        f"Previous instruction (the one the editor was given): {req.previous_instruction}"
    )
    return [
        {"role": "system", "content": EXPERT_SYSTEM},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "SOURCE image:"},
                {"type": "image_url", "image_url": {"url": png_data_url(req.source_png)}},
                {"type": "text", "text": "EDITED image (previous edit):"},
                {"type": "image_url", "image_url": {"url": png_data_url(req.previous_png)}},
                {"type": "text", "text": text},
            ],
        },
    ]


class OpenAIExpert:
    """The expert playing the thinker (roles.Thinker) over an OpenAI-compatible API."""

    thread_safe = True  # calls may come from several threads at once (inflight.shared)

    def __init__(self, cfg: OpenAIAPIConfig):
        self.client = OpenAIChatClient(cfg, "expert")
        self.name = "expert"
        self.model_id = f"openai:{cfg.model}"

    @property
    def usage(self) -> Usage:
        return self.client.usage

    def close(self) -> None:
        self.client.close()

    def think(self, requests: list[ThinkRequest]) -> list[Verdict]:
        """One verdict per request; raises OpenAICallError if any call failed after its retries (the calls that
        were answered are cached, so doing the batch again asks only the failed ones)."""
        reqs = [
            ChatRequest(f"#{i}", expert_messages(r), "expert_verdict", EXPERT_SCHEMA) for i, r in enumerate(requests)
        ]
        results = self.client.complete_many(reqs)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            raise OpenAICallError(
                f"expert: {len(failed)} of {len(reqs)} calls failed after their retries; the first: {failed[0]}"
            ) from failed[0]
        return [parse_expert_answer(r.text) for r in results if not isinstance(r, BaseException)]


# -- judge -----------------------------------------------------------------------------------------------
_JUDGE_KEYS = ("editing_success", "over_editing", "naturalness", "artifacts")

JUDGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"reasoning": {"type": "string"}, **{k: {"type": "number"} for k in _JUDGE_KEYS}},
    "required": ["reasoning", *_JUDGE_KEYS],
    "additionalProperties": False,
}

JUDGE_SYSTEM = (
    "You are a professional digital artist rating an AI image edit (VIEScore protocol). You see the SOURCE image, "
    "the EDITED image and the editing instruction. Rate on 0-10 integers:\n"
    "- editing_success: how well the edit carries out the instruction (0 not at all, 10 perfectly);\n"
    "- over_editing: how little was changed beyond what the instruction asks (0 changed everything, 10 nothing "
    "extra);\n"
    "- naturalness: how natural the edited image looks (0 unnatural, 10 fully natural);\n"
    "- artifacts: absence of artifacts, distortion, noise or blur (0 heavy artifacts, 10 none).\n"
    "Answer with JSON only: "
    '{"reasoning": str, "editing_success": n, "over_editing": n, "naturalness": n, "artifacts": n}.'
)


def judge_messages(source_png: bytes, edited_png: bytes, instruction: str) -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": JUDGE_SYSTEM},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "SOURCE image:"},
                {"type": "image_url", "image_url": {"url": png_data_url(source_png)}},
                {"type": "text", "text": "EDITED image:"},
                {"type": "image_url", "image_url": {"url": png_data_url(edited_png)}},
                {"type": "text", "text": f"Editing instruction: {instruction}"},
            ],
        },
    ]


def parse_judge_answer(raw: str) -> JudgeScore:
    """Strict parse of the judge's JSON (a ```json fence is tolerated): four numbers in 0-10.

    SC = min(editing_success, over_editing), PQ = min(naturalness, artifacts), as VIEScore takes the minimum
    of its sub-scores. Raises FormatError naming what is wrong.
    """
    d = load_json_object(raw, "judge answer")
    vals = {}
    for k in _JUDGE_KEYS:
        v = d.get(k)
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise FormatError(f"{k} is missing or not a number")
        if not 0 <= v <= 10:
            raise FormatError(f"{k}={v} is outside 0-10")
        vals[k] = float(v)
    return JudgeScore(
        semantic=min(vals["editing_success"], vals["over_editing"]),
        quality=min(vals["naturalness"], vals["artifacts"]),
    )


class OpenAIJudge:
    """A VIEScore judge (roles.Judge) over an OpenAI-compatible API."""

    thread_safe = True  # calls may come from several threads at once (inflight.shared)

    def __init__(self, cfg: JudgeConfig):
        self.client = OpenAIChatClient(cfg, "judge")
        self.format_retries = cfg.format_retries
        self.name = "judge"
        self.model_id = f"openai:{cfg.model}"
        self._n = 0

    @property
    def usage(self) -> Usage:
        return self.client.usage

    def close(self) -> None:
        self.client.close()

    async def _score(self, call_id: str, source_png: bytes, edited_png: bytes, instruction: str) -> JudgeScore:
        messages = judge_messages(source_png, edited_png, instruction)
        error = ""
        for attempt in range(self.format_retries + 1):
            try:
                res = await self.client.acomplete(ChatRequest(call_id, messages, "viescore", JUDGE_SCHEMA, attempt))
            except OpenAICallError as exc:
                raise JudgeError(str(exc)) from exc
            try:
                return parse_judge_answer(res.text)
            except FormatError as exc:
                error = f"{exc} (answer {res.text[:200]!r}, finish_reason {res.finish_reason})"
                log.warning("judge call %s attempt %d: unparsable answer: %s", call_id, attempt + 1, error)
        raise JudgeError(
            f"judge call {call_id} (model {self.client.cfg.model!r}, instruction {instruction!r}): no parsable "
            f"score after {self.format_retries + 1} attempts: {error}"
        )

    def score_many(self, requests: list[ScoreRequest]) -> list[JudgeScore]:
        """Scores, one per request, same order, at most `concurrency` calls in flight (the reference is not sent:
        a VIEScore judge sees the source, the edit and the instruction). Every call is awaited before the first
        failure, in request order, is raised (a JudgeError): the answered calls are cached for a rerun."""
        start, self._n = self._n, self._n + len(requests)

        async def go() -> list[JudgeScore | BaseException]:
            calls = (
                self._score(f"#{start + i}", r.source_png, r.edited_png, r.instruction) for i, r in enumerate(requests)
            )
            return list(await asyncio.gather(*calls, return_exceptions=True))

        results = self.client.run_sync(go())
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return [r for r in results if not isinstance(r, BaseException)]

    def score(self, source_png: bytes, edited_png: bytes, instruction: str, reference: str | None) -> JudgeScore:
        return self.score_many([ScoreRequest(source_png, edited_png, instruction, reference)])[0]
