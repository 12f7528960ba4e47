"""The HTTP editor service: client and server on 127.0.0.1, a synthetic editor behind them."""

from __future__ import annotations

import base64
import os
import re
import socket
import subprocess
import sys

import httpx
import pytest

from editthinker.backends.factory import build_editor
from editthinker.backends.http_editor import EditorServer, EditorServiceError, HttpEditor, make_app
from editthinker.backends.synthetic import SyntheticEditor
from editthinker.config import HttpEditorConfig, parse_params
from editthinker.roles import EditRequest
from editthinker.world.scene import render_png
from editthinker.world.tasks import make_task


class FailingEditor:
    name = "broken"
    model_id = "broken/v0"

    def __init__(self) -> None:
        self.calls = 0

    def edit(self, requests):
        self.calls += 1
        raise RuntimeError("CUDA out of memory (pretend)")


def _counted(editor):
    """The editor's app with every request's method and path recorded in `hits`."""
    app, hits = make_app(editor), []

    @app.middleware("http")
    async def count(request, call_next):
        hits.append(f"{request.method} {request.url.path}")
        return await call_next(request)

    return app, hits


class Sleeps(list):
    """A client's `sleep`: records the backoff waits instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def served():
    editor = SyntheticEditor("painter", "painter", 64)
    with EditorServer(make_app(editor)) as server:
        yield editor, server.url


def _requests(n: int = 6) -> list[EditRequest]:
    tasks = [make_task(21, i, 2, 4, {"canonical": 1.0, "vague": 1.0}) for i in range(n)]
    return [EditRequest(render_png(t.source, 64), t.instruction, i) for i, t in enumerate(tasks)]


def test_client_matches_in_process_editor(served):
    editor, url = served
    client = HttpEditor("remote", url, retries=0)
    reqs = _requests()
    assert client.edit(reqs) == editor.edit(reqs)
    assert client.edit([]) == []
    assert client.health() == {"name": "painter", "model_id": editor.model_id}
    r = httpx.get(f"{url}/health")
    assert (r.status_code, r.headers["content-type"], r.json()) == (
        200,
        "application/json",
        {"name": "painter", "model_id": editor.model_id},
    )


def test_single_request_form(served):
    editor, url = served
    req = _requests(1)[0]
    body = {"image": base64.b64encode(req.source_png).decode(), "instruction": req.instruction, "seed": req.seed}
    r = httpx.post(f"{url}/edit", json=body)
    assert r.status_code == 200
    assert base64.b64decode(r.json()["image"]) == editor.edit([req])[0]


def test_server_error_is_retried_with_backoff_then_reported():
    broken = FailingEditor()
    app, hits = _counted(broken)
    with EditorServer(app) as server:
        sleeps = Sleeps()
        client = HttpEditor("remote", server.url, retries=2, backoff_s=0.5, sleep=sleeps)
        with pytest.raises(EditorServiceError, match=r"failed after 3 attempts; last: HTTP 500: .*out of memory") as e:
            client.edit(_requests(1))
    assert server.url in str(e.value)
    assert broken.calls == 3
    assert hits == ["POST /edit"] * 3
    assert sleeps == [0.5, 1.0]  # backoff_s * 2**k before retry k


class FlakyEditor(SyntheticEditor):
    """Fails its first `failures` calls, then edits."""

    def __init__(self, failures: int) -> None:
        super().__init__("painter", "painter", 64)
        self.failures, self.calls = failures, 0

    def edit(self, requests):
        self.calls += 1
        if self.calls <= self.failures:
            raise RuntimeError("transient")
        return super().edit(requests)


def test_retry_recovers_after_transient_5xx():
    flaky = FlakyEditor(failures=2)
    with EditorServer(make_app(flaky)) as server:
        sleeps = Sleeps()
        client = HttpEditor("remote", server.url, retries=2, backoff_s=0.25, sleep=sleeps)
        reqs = _requests(2)
        assert client.edit(reqs) == SyntheticEditor("painter", "painter", 64).edit(reqs)
    assert flaky.calls == 3
    assert sleeps == [0.25, 0.5]


def test_bad_request_is_not_retried():
    editor = SyntheticEditor("painter", "painter", 64)
    app, hits = _counted(editor)
    with EditorServer(app) as server:
        sleeps = Sleeps()
        client = HttpEditor("remote", server.url, retries=3, backoff_s=0.01, sleep=sleeps)
        with pytest.raises(EditorServiceError, match="refused the request: HTTP 400"):
            client.edit([EditRequest(b"", "x", 0)])  # an empty image: the service answers 400
        assert hits == ["POST /edit"]
        assert sleeps == []
        bad = [
            b"not json",
            b'{"requests": "x"}',
            b'{"requests": [{"image": "AAAA", "instruction": 3}]}',
            b'{"image": "!!", "instruction": "x"}',
        ]
        for body in bad:
            r = httpx.post(f"{server.url}/edit", content=body)
            assert r.status_code == 400 and isinstance(r.json()["error"], str), body
        r = httpx.post(f"{server.url}/edit")
        assert (r.status_code, r.json()) == (400, {"error": "a JSON body is required"})
        r = httpx.get(f"{server.url}/nope")
        assert (r.status_code, r.json()) == (404, {"error": "no route /nope"})


def test_unreachable_service_fails_clearly():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sleeps = Sleeps()
    client = HttpEditor("remote", f"http://127.0.0.1:{port}", retries=1, backoff_s=0.01, timeout_s=2, sleep=sleeps)
    with pytest.raises(EditorServiceError, match=rf"127.0.0.1:{port} failed after 2 attempts; last: ConnectError"):
        client.edit(_requests(1))
    assert sleeps == [0.01]


def test_editor_server_stops_cleanly():
    server = EditorServer(make_app(SyntheticEditor("painter", "painter", 64))).start()
    assert HttpEditor("remote", server.url, retries=0).health()["name"] == "painter"
    server.stop()
    assert server._thread is not None and not server._thread.is_alive()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/health")
    EditorServer(make_app(SyntheticEditor("painter", "painter", 64))).stop()  # never started: stop still closes


def test_registry_builds_http_editor_from_params():
    params = parse_params(
        {"editors": [{"name": "omnigen2", "kind": "http", "url": "http://gpu-box:8700/", "retries": 1}]}
    )
    cfg = params.editors[0]
    assert isinstance(cfg, HttpEditorConfig)
    editor = build_editor(cfg, 64)
    assert isinstance(editor, HttpEditor)
    assert (editor.url, editor.retries, editor.model_id) == (
        "http://gpu-box:8700",
        1,
        "http-editor@http://gpu-box:8700",
    )


def test_serve_editor_command(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("editors:\n  - {name: painter, kind: synthetic, profile: painter}\n")
    cmd = [sys.executable, "-m", "editthinker.cli", "serve-editor", "--params", str(params), "--editor", "painter"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    proc = subprocess.Popen([*cmd, "--port", "0"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:  # the line comes once the socket listens: no polling needed
            seen.append(line)
            if m := re.search(r"serving editor painter on (http://127\.0\.0\.1:\d+)", line):
                break
        else:
            raise AssertionError(f"serve-editor exited ({proc.wait()}): {''.join(seen)}")
        client = HttpEditor("remote", m.group(1), retries=0)
        assert client.health() == {"name": "painter", "model_id": SyntheticEditor("painter", "painter", 64).model_id}
        reqs = _requests(3)
        assert client.edit(reqs) == SyntheticEditor("painter", "painter", 64).edit(reqs)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if proc.stderr is not None:
            proc.stderr.close()


def test_served_diffusers_editor_matches_in_process(tmp_path):
    from editthinker.backends.diffusers_editors import DiffusersEditor
    from editthinker.config import DiffusersEditorConfig
    from tiny_editors import save_tiny

    path = save_tiny("flux-kontext", tmp_path / "flux")
    editor = DiffusersEditor(
        DiffusersEditorConfig(name="flux", pipeline="flux-kontext", model=str(path), num_inference_steps=2)
    )
    with EditorServer(make_app(editor)) as server:
        client = HttpEditor("remote", server.url, retries=0)
        reqs = _requests(2)
        assert client.edit(reqs) == editor.edit(reqs)
        assert client.health()["model_id"] == f"flux-kontext:{path}"
