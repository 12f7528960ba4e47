"""The HTTP editor service: client and server on 127.0.0.1, a synthetic editor behind them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from editthinker.backends.factory import build_editor
from editthinker.backends.http_editor import EditorServiceError, HttpEditor, make_server
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


def _serve(editor):
    server = make_server(editor, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def served():
    editor = SyntheticEditor("painter", "painter", 64)
    server, url = _serve(editor)
    yield editor, url
    server.shutdown()
    server.server_close()


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


def test_single_request_form(served):
    editor, url = served
    req = _requests(1)[0]
    import base64

    body = {"image": base64.b64encode(req.source_png).decode(), "instruction": req.instruction, "seed": req.seed}
    r = httpx.post(f"{url}/edit", json=body)
    assert r.status_code == 200
    assert base64.b64decode(r.json()["image"]) == editor.edit([req])[0]


def test_server_error_is_retried_then_reported():
    broken = FailingEditor()
    server, url = _serve(broken)
    try:
        client = HttpEditor("remote", url, retries=2, backoff_s=0.01)
        with pytest.raises(EditorServiceError, match=r"failed after 3 attempts; last: HTTP 500: .*out of memory"):
            client.edit(_requests(1))
        assert broken.calls == 3
    finally:
        server.shutdown()
        server.server_close()


def test_bad_request_is_not_retried(served):
    _, url = served
    client = HttpEditor("remote", url, retries=3, backoff_s=0.01)
    with pytest.raises(EditorServiceError, match="refused the request: HTTP 400"):
        client.edit([EditRequest(b"", "x", 0)])  # an empty image: the server answers 400


def test_unreachable_service_fails_clearly():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = HttpEditor("remote", f"http://127.0.0.1:{port}", retries=1, backoff_s=0.01, timeout_s=2)
    with pytest.raises(EditorServiceError, match="failed after 2 attempts; last: ConnectError"):
        client.edit(_requests(1))


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
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    params = tmp_path / "params.yaml"
    params.write_text("editors:\n  - {name: painter, kind: synthetic, profile: painter}\n")
    cmd = [sys.executable, "-m", "editthinker.cli", "serve-editor", "--params", str(params), "--editor", "painter"]
    proc = subprocess.Popen([*cmd, "--port", str(port)], env=os.environ.copy())
    try:
        client = HttpEditor("remote", f"http://127.0.0.1:{port}", retries=0)
        deadline = time.monotonic() + 60
        while True:
            try:
                health = client.health()
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.2)
        assert health["name"] == "painter"
        reqs = _requests(3)
        assert client.edit(reqs) == SyntheticEditor("painter", "painter", 64).edit(reqs)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_served_diffusers_editor_matches_in_process(tmp_path):
    from tests.tiny_editors import save_tiny

    from editthinker.backends.diffusers_editors import DiffusersEditor
    from editthinker.config import DiffusersEditorConfig

    path = save_tiny("flux-kontext", tmp_path / "flux")
    editor = DiffusersEditor(
        DiffusersEditorConfig(name="flux", pipeline="flux-kontext", model=str(path), num_inference_steps=2)
    )
    server, url = _serve(editor)
    try:
        client = HttpEditor("remote", url, retries=0)
        reqs = _requests(2)
        assert client.edit(reqs) == editor.edit(reqs)
        assert client.health()["model_id"] == f"flux-kontext:{path}"
    finally:
        server.shutdown()
        server.server_close()
