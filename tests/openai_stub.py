"""A tiny scripted OpenAI-compatible server on 127.0.0.1, for failure tests and the bench.

Each POST /v1/chat/completions takes the next action of `script` (then `default` when the script is spent):
- Answer(text): a normal chat completion whose message content is `text`;
- Status(code, headers, body): an error reply (500, 429 with Retry-After, ...);
- Hang(seconds): sleeps (bounded) before answering nothing, so the client times out;
- Raw(body): a 200 whose body is `body` as is (e.g. not JSON).
`respond(body)`, when given, picks the action of every request the script does not (answers that depend on the
request). Seeded fault injection: with `fault_rate` > 0, a request is answered with `fault` instead, with that
probability, decided by a hash of (`fault_seed`, the request body, how often this body was seen), so the faults
do not depend on the order in which concurrent requests arrive; `faults_injected` counts them.
`delay_s` is added before every reply (latency for the bench). Every request body and Authorization header is
recorded, so tests can count calls and check what was sent.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Answer:
    text: str
    prompt_tokens: int = 100
    completion_tokens: int = 20


@dataclass(frozen=True)
class Status:
    code: int
    headers: dict[str, str] = field(default_factory=dict)
    body: str = '{"error": {"message": "stub error", "type": "server_error"}}'


@dataclass(frozen=True)
class Hang:
    seconds: float = 2.0


@dataclass(frozen=True)
class Raw:
    body: str


Action = Answer | Status | Hang | Raw


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # the default backlog (5) drops concurrent connects: 1 s SYN retransmits


class StubOpenAIServer:
    def __init__(
        self,
        script: list[Action] | None = None,
        default: Action | None = None,
        delay_s: float = 0.0,
        respond: Callable[[dict[str, Any]], Action] | None = None,
        fault_rate: float = 0.0,
        fault_seed: int = 0,
        fault: Action | None = None,
    ):
        self.script = list(script or [])
        self.default = default or Answer('{"is_satisfied": true, "reason": "ok", "new_rewritten_prompt": "x"}')
        self.delay_s = delay_s
        self.respond = respond
        self.fault_rate = fault_rate
        self.fault_seed = fault_seed
        self.fault = fault or Status(503, {"retry-after-ms": "1"})  # the SDK retries it after 1 ms
        self.faults_injected = 0
        self._seen: dict[str, int] = {}
        self.requests: list[dict[str, Any]] = []
        self.auth_headers: list[str] = []
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out at once (no 40 ms delayed-ACK stall)

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _send(self, code: int, body: str, headers: dict[str, str] | None = None) -> None:
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                with contextlib.suppress(OSError):  # the client gave up (timeout)
                    self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802
                n = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(n)
                if len(raw) < n:  # the client died mid-request (a kill -9): no request was made, as for a real server
                    self.close_connection = True
                    return
                body = json.loads(raw or b"{}")
                with stub._lock:
                    stub.requests.append(body)
                    stub.auth_headers.append(self.headers.get("Authorization", ""))
                    action = stub._action(body)
                if stub.delay_s:
                    time.sleep(stub.delay_s)
                if isinstance(action, Hang):
                    time.sleep(min(action.seconds, 10.0))
                    self.close_connection = True
                    return
                if isinstance(action, Status):
                    self._send(action.code, action.body, action.headers)
                elif isinstance(action, Raw):
                    self._send(200, action.body)
                else:
                    self._send(200, json.dumps(completion(body.get("model", ""), action)))

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> StubOpenAIServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)

    def _action(self, body: dict[str, Any]) -> Action:
        """The reply to one request (call holding the lock)."""
        if self.fault_rate > 0:
            key = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
            n = self._seen[key] = self._seen.get(key, 0) + 1
            draw = hashlib.sha256(f"{self.fault_seed}:{key}:{n}".encode()).digest()
            if int.from_bytes(draw[:8], "big") / 2**64 < self.fault_rate:
                self.faults_injected += 1
                return self.fault
        if self.script:
            return self.script.pop(0)
        return self.respond(body) if self.respond is not None else self.default

    @property
    def calls(self) -> int:
        with self._lock:
            return len(self.requests)


def completion(model: str, a: Answer) -> dict[str, Any]:
    return {
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": a.text}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": a.prompt_tokens,
            "completion_tokens": a.completion_tokens,
            "total_tokens": a.prompt_tokens + a.completion_tokens,
        },
    }


def role_answer(body: dict[str, Any]) -> Answer:
    """An answer for the role that asks (by its structured-output schema name, as the API expert and judge send
    it): VIEScore numbers for the judge; for the expert, a verdict that accepts the edit for about half the
    requests and otherwise rewrites the instruction. Decided by a hash of the request, so the same requests get
    the same answers in any order."""
    schema = (body.get("response_format") or {}).get("json_schema", {}).get("name", "")
    draw = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).digest()
    if schema == "viescore":
        a, b = draw[0] % 11, draw[1] % 11
        scores = {"editing_success": a, "over_editing": 10, "naturalness": 10, "artifacts": max(a, b)}
        return Answer(json.dumps({"reasoning": "stub", **scores}))
    text = body["messages"][1]["content"][-1]["text"] if body.get("messages") else ""
    original = text.split("\n", 1)[0].removeprefix("Original instruction: ")
    satisfied = draw[0] % 2 == 0
    prompt = "" if satisfied else f"{original}, exactly as said ({draw[1]})"
    return Answer(json.dumps({"is_satisfied": satisfied, "reason": "stub", "new_rewritten_prompt": prompt}))


def main() -> None:
    """`python tests/openai_stub.py --delay-s 0.05`: serve the default answer (`--roles`: `role_answer`) in its own
    process (the bench), print the base URL, stop on SIGTERM or after --max-s seconds."""
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--delay-s", type=float, default=0.0)
    ap.add_argument("--max-s", type=float, default=600.0)
    ap.add_argument("--roles", action="store_true", help="answer the expert and the judge by role (role_answer)")
    args = ap.parse_args()
    with StubOpenAIServer(delay_s=args.delay_s, respond=role_answer if args.roles else None) as srv:
        print(srv.base_url, flush=True)
        time.sleep(args.max_s)


if __name__ == "__main__":
    main()
