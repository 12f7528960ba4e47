"""A tiny scripted OpenAI-compatible server on 127.0.0.1, for failure tests and the bench.

Each POST /v1/chat/completions takes the next action of `script` (then `default` when the script is spent):
- Answer(text): a normal chat completion whose message content is `text`;
- Status(code, headers, body): an error reply (500, 429 with Retry-After, ...);
- Hang(seconds): sleeps (bounded) before answering nothing, so the client times out;
- Raw(body): a 200 whose body is `body` as is (e.g. not JSON).
`responder(body)`, when given, chooses the action from the request body instead (answers that depend on what was
asked, whatever the order of concurrent calls). `delay_s` is added before every reply (latency for the bench).
Every request body and Authorization header is recorded, so tests can count calls and check what was sent.
"""

from __future__ import annotations

import contextlib
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
        responder: Callable[[dict[str, Any]], Action] | None = None,
    ):
        self.script = list(script or [])
        self.responder = responder
        self.default = default or Answer('{"is_satisfied": true, "reason": "ok", "new_rewritten_prompt": "x"}')
        self.delay_s = delay_s
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
                body = json.loads(self.rfile.read(n) or b"{}")
                with stub._lock:
                    stub.requests.append(body)
                    stub.auth_headers.append(self.headers.get("Authorization", ""))
                    action = stub.script.pop(0) if stub.script else stub.default
                if stub.responder is not None:
                    action = stub.responder(body)
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


def main() -> None:
    """`python tests/openai_stub.py --delay-s 0.05`: serve the default answer in its own process (the bench),
    print the base URL, stop on SIGTERM or after --max-s seconds."""
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--delay-s", type=float, default=0.0)
    ap.add_argument("--max-s", type=float, default=600.0)
    args = ap.parse_args()
    with StubOpenAIServer(delay_s=args.delay_s) as srv:
        print(srv.base_url, flush=True)
        time.sleep(args.max_s)


if __name__ == "__main__":
    main()
