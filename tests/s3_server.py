"""A real S3-compatible HTTP server on loopback for the tests: moto's `ThreadedMotoServer`.

Why moto: it is pip-installable (pinned in requirements.lock, no Docker, no MinIO binary - neither is available
here), runs in-process on a thread bound to 127.0.0.1 with port 0 (a free port, so parallel test workers do
not collide), speaks the S3 REST API over real HTTP to boto3 and to DVC's s3fs/aiobotocore, and implements
what these tests use: buckets, put/get/list/delete, multipart uploads (boto3's managed transfer) and the
conditional writes `If-Match` / `If-None-Match: *` on PutObject (412 PreconditionFailed).

One gap, read in moto 5.2.5's `S3Response.put_object`: it checks a condition, then stores the object, as two
steps with no lock between them, while its server handles requests on several threads, so two conditional PUTs
racing on one key could both pass (AWS S3 makes check and write one atomic step). We did not see it happen (8
threads x 25 CAS increments lost nothing), but a CAS test must not depend on thread timing: `atomic_writes=True`
serialises mutating requests in a small WSGI wrapper, which gives the server S3's guarantee.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

_WRITES = {"PUT", "POST", "DELETE"}


class _SerialWrites:
    """WSGI middleware: one mutating request at a time, so a conditional write is checked and applied atomically."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") not in _WRITES:
            return self.app(environ, start_response)
        with self.lock:
            return list(self.app(environ, start_response))


class LoopbackS3(ThreadedMotoServer):
    def __init__(self, atomic_writes: bool = True) -> None:
        super().__init__(ip_address="127.0.0.1", port=0, verbose=False)
        self.atomic_writes = atomic_writes

    def _server_entry(self) -> None:
        app: Any = DomainDispatcherApplication(create_backend_app)
        if self.atomic_writes:
            app = _SerialWrites(app)
        self._server = make_server(self._ip_address, self._port, app, True, request_handler=MotoRequestHandler)
        self._server_ready_event.set()
        self._server.serve_forever()

    @property
    def endpoint_url(self) -> str:
        host, port = self.get_host_and_port()
        return f"http://{host}:{port}"


@contextmanager
def loopback_s3(atomic_writes: bool = True) -> Iterator[str]:
    """Start an S3 server on 127.0.0.1:<free port>; yield its endpoint URL. moto keeps its buckets per process,
    not per server, so each test makes a bucket of its own."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one access-log line per request otherwise
    server = LoopbackS3(atomic_writes=atomic_writes)
    server.start()
    try:
        yield server.endpoint_url
    finally:
        server.stop()


def isolated_bucket(endpoint: str, monkeypatch, tmp_path, key_id: str, secret: str, prefix: str) -> str:
    """Make boto3 see only these dummy credentials (no profile, config or token from the host) and create
    a fresh bucket on the loopback server; return its name."""
    import uuid

    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    bucket = f"{prefix}-{uuid.uuid4().hex[:12]}"
    # a fresh session: boto3's default one keeps the first credentials it resolved, whatever the environment says later
    boto3.session.Session().client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    return bucket
