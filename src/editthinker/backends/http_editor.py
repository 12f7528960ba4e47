"""An editor behind HTTP: the client (`HttpEditor`, a roles.Editor) and the service (`make_app`, any in-process editor).

Protocol (JSON over HTTP, images as base64 PNG):

    POST /edit     {"image": b64, "instruction": str, "seed": int}          -> {"image": b64}
                   {"requests": [{"image", "instruction", "seed"}, ...]}     -> {"images": [b64, ...]}
    GET  /health   -> {"name": str, "model_id": str}

Errors answer {"error": str}: 400 for a request the service refuses, 500 when the editor failed (the client
retries those), 404 for an unknown route. The batch form lets the served editor batch its model calls; the
client always sends it. Editors that are not in-process diffusers pipelines (OmniGen2, anything with its own
environment) run behind this protocol. The service is a FastAPI app run by uvicorn (`EditorServer`); one lock
serialises the editor's calls.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from editthinker.roles import Editor, EditRequest

MAX_BODY = 256 * 1024 * 1024


class EditorServiceError(RuntimeError):
    """The editor service could not edit (after retries, or a request it refused)."""


class _Transient(Exception):
    """A transport error or a 5xx answer: worth another attempt."""


def _b64(png: bytes) -> str:
    return base64.b64encode(png).decode("ascii")


def _unb64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise ValueError("image must be a base64 string")
    return base64.b64decode(text, validate=True)


class HttpEditor:
    """roles.Editor against a service speaking the protocol above; retries transport errors and 5xx answers
    `retries` times, waiting backoff_s * 2**k before retry k (k = 0, 1, ...); `sleep` is what waits."""

    thread_safe = True  # calls may come from several threads at once (inflight.shared)

    def __init__(
        self,
        name: str,
        url: str,
        model_id: str = "",
        timeout_s: float = 600.0,
        retries: int = 2,
        backoff_s: float = 1.0,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.name = name
        self.url = url.rstrip("/")
        self.model_id = model_id or f"http-editor@{self.url}"
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self._sleep = sleep
        self._client = httpx.Client(timeout=timeout_s)

    def health(self) -> dict[str, Any]:
        r = self._client.get(f"{self.url}/health")
        r.raise_for_status()
        return dict(r.json())

    def _post_once(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            r = self._client.post(f"{self.url}/edit", json=body)
        except httpx.TransportError as exc:
            raise _Transient(f"{type(exc).__name__}: {exc}") from exc
        if r.status_code >= 500:
            raise _Transient(f"HTTP {r.status_code}: {r.text[:300]}")
        if r.status_code != 200:
            raise EditorServiceError(
                f"editor service {self.url} refused the request: HTTP {r.status_code}: {r.text[:300]}"
            )
        return dict(r.json())

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        retrying = Retrying(
            stop=stop_after_attempt(self.retries + 1),
            wait=wait_exponential(multiplier=self.backoff_s),
            retry=retry_if_exception_type(_Transient),
            sleep=self._sleep,
            reraise=True,
        )
        try:
            return retrying(self._post_once, body)
        except _Transient as exc:
            raise EditorServiceError(
                f"editor service {self.url} failed after {self.retries + 1} attempts; last: {exc}"
            ) from exc

    def edit(self, requests: list[EditRequest]) -> list[bytes]:
        if not requests:
            return []
        body = {
            "requests": [{"image": _b64(r.source_png), "instruction": r.instruction, "seed": r.seed} for r in requests]
        }
        images = self._post(body).get("images")
        if not isinstance(images, list) or len(images) != len(requests):
            raise EditorServiceError(
                f"editor service {self.url} answered {len(images or [])} images for {len(requests)} requests"
            )
        try:
            return [_unb64(i) for i in images]
        except (ValueError, binascii.Error) as exc:
            raise EditorServiceError(f"editor service {self.url} answered an undecodable image: {exc}") from None

    def close(self) -> None:
        self._client.close()


def _parse_request(d: Any) -> EditRequest:
    if not isinstance(d, dict):
        raise ValueError("each request must be an object")
    instruction, seed = d.get("instruction"), d.get("seed", 0)
    if not isinstance(instruction, str) or not isinstance(seed, int):
        raise ValueError("instruction must be a string and seed an integer")
    image = _unb64(d.get("image"))
    try:
        with Image.open(io.BytesIO(image)) as im:
            im.verify()
    except Exception as exc:  # PIL raises many kinds for a bad file
        raise ValueError(f"image is not a readable image: {exc}") from None
    return EditRequest(image, instruction, seed)


def make_app(editor: Editor) -> FastAPI:
    """The editor service for `editor`: POST /edit and GET /health, as in the protocol above."""
    lock = threading.Lock()
    app = FastAPI(title=f"editor {editor.name}", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        detail = f"no route {request.url.path}" if exc.status_code == 404 else str(exc.detail)
        return JSONResponse({"error": detail}, status_code=exc.status_code, headers=exc.headers)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"name": editor.name, "model_id": editor.model_id}

    def handle(raw: bytes) -> tuple[int, dict[str, Any]]:
        try:
            if not raw or len(raw) > MAX_BODY:
                raise ValueError("a JSON body is required")
            body = json.loads(raw)
            batch = isinstance(body, dict) and "requests" in body
            items = body["requests"] if batch else [body]
            if not isinstance(items, list):
                raise ValueError("requests must be a list")
            requests = [_parse_request(d) for d in items]
        except (ValueError, binascii.Error) as exc:
            return 400, {"error": str(exc)}
        try:
            with lock:
                images = editor.edit(requests)
        except Exception as exc:  # the editor failed: a 5xx the client may retry
            return 500, {"error": f"{type(exc).__name__}: {exc}"}
        encoded = [_b64(i) for i in images]
        return 200, {"images": encoded} if batch else {"image": encoded[0]}

    @app.post("/edit")
    async def edit(request: Request) -> JSONResponse:
        if int(request.headers.get("content-length") or 0) > MAX_BODY:
            return JSONResponse({"error": f"the body is over {MAX_BODY} bytes"}, status_code=400)
        status, payload = await run_in_threadpool(handle, await request.body())
        return JSONResponse(payload, status_code=status)

    return app


class EditorServer:
    """uvicorn serving `app` on a socket bound at construction (port 0: a free port, see `.port`, `.url`).

    `run()` serves in this thread until SIGINT/SIGTERM; `start()` serves in a background thread and `stop()`
    (or leaving the `with` block) shuts it down. Connections made before serving starts wait in the backlog.
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.create_server((host, port), family=family)
        self.host, self.port = host, int(self.socket.getsockname()[1])
        self.server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=False))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def run(self) -> None:
        try:
            self.server.run(sockets=[self.socket])
        finally:
            self.socket.close()

    def start(self) -> EditorServer:
        self._thread = threading.Thread(target=self.run, name=f"editor-server:{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.socket.close()

    def __enter__(self) -> EditorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
