"""An editor behind HTTP: the client (`HttpEditor`, a roles.Editor) and the server (`serve`, any in-process editor).

Protocol (JSON over HTTP, images as base64 PNG):

    POST /edit     {"image": b64, "instruction": str, "seed": int}          -> {"image": b64}
                   {"requests": [{"image", "instruction", "seed"}, ...]}     -> {"images": [b64, ...]}
    GET  /health   -> {"name": str, "model_id": str}

The batch form lets the served editor batch its model calls; the client always sends it. Editors that are
not in-process diffusers pipelines (OmniGen2, anything with its own environment) run behind this protocol.
The server is the standard library's (ThreadingHTTPServer); one lock serialises the editor's calls.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
from PIL import Image

from editthinker.roles import Editor, EditRequest

MAX_BODY = 256 * 1024 * 1024


class EditorServiceError(RuntimeError):
    """The editor service could not edit (after retries, or a request it refused)."""


def _b64(png: bytes) -> str:
    return base64.b64encode(png).decode("ascii")


def _unb64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise ValueError("image must be a base64 string")
    return base64.b64decode(text, validate=True)


class HttpEditor:
    """roles.Editor against a service speaking the protocol above; retries transport errors and 5xx answers."""

    def __init__(
        self,
        name: str,
        url: str,
        model_id: str = "",
        timeout_s: float = 600.0,
        retries: int = 2,
        backoff_s: float = 1.0,
    ):
        self.name = name
        self.url = url.rstrip("/")
        self.model_id = model_id or f"http-editor@{self.url}"
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self._client = httpx.Client(timeout=timeout_s)

    def health(self) -> dict[str, Any]:
        r = self._client.get(f"{self.url}/health")
        r.raise_for_status()
        return dict(r.json())

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                r = self._client.post(f"{self.url}/edit", json=body)
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            if r.status_code >= 500:
                last = f"HTTP {r.status_code}: {r.text[:300]}"
                continue
            if r.status_code != 200:
                raise EditorServiceError(
                    f"editor service {self.url} refused the request: HTTP {r.status_code}: {r.text[:300]}"
                )
            return dict(r.json())
        raise EditorServiceError(f"editor service {self.url} failed after {self.retries + 1} attempts; last: {last}")

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


def make_server(editor: Editor, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """A server for `editor` (port 0: a free port, see `server.server_address`); call serve_forever()."""
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
            pass

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            if self.path == "/health":
                self._send(200, {"name": editor.name, "model_id": editor.model_id})
            else:
                self._send(404, {"error": f"no route {self.path}"})

        def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
            if self.path != "/edit":
                self._send(404, {"error": f"no route {self.path}"})
                return
            try:
                n = int(self.headers.get("Content-Length", "0"))
                if n <= 0 or n > MAX_BODY:
                    raise ValueError("a JSON body is required")
                body = json.loads(self.rfile.read(n))
                batch = isinstance(body, dict) and "requests" in body
                items = body["requests"] if batch else [body]
                if not isinstance(items, list):
                    raise ValueError("requests must be a list")
                requests = [_parse_request(d) for d in items]
            except (ValueError, binascii.Error) as exc:
                self._send(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
                return
            try:
                with lock:
                    images = editor.edit(requests)
            except Exception as exc:  # the editor failed: a 5xx the client may retry
                self._send(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(exc).__name__}: {exc}"})
                return
            encoded = [_b64(i) for i in images]
            self._send(200, {"images": encoded} if batch else {"image": encoded[0]})

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server
