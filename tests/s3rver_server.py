"""s3rver (npm's S3-compatible development server) on loopback, for the tests that show what the registry does on
a store that ignores conditional writes.

The package is installed once with npm into the project's `.cache/s3rver` (git-ignored) and started with node on
127.0.0.1, port 0 (a free port, which it prints). Where node or npm is missing, or the package cannot be
installed (no network), `s3rver_endpoint` skips the test with the reason.
"""

from __future__ import annotations

import json
import select
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

S3RVER_VERSION = "3.7.1"
CACHE = Path(__file__).resolve().parents[1] / ".cache" / "s3rver"
# s3rver's built-in credentials: it checks request signatures against them.
ACCESS_KEY = SECRET_KEY = "S3RVER"
_START = """
const S3rver = require(process.argv[1]);
new S3rver({address: "127.0.0.1", port: 0, silent: true, directory: process.argv[2]}).run().then(
  (addr) => console.log(JSON.stringify(addr)),
  (err) => { console.error(String(err)); process.exit(1); });
"""


def _installed(module: Path) -> bool:
    meta = module / "package.json"
    return meta.is_file() and json.loads(meta.read_text()).get("version") == S3RVER_VERSION


def s3rver_module() -> tuple[Path | None, str]:
    """(the installed package's folder, "") or (None, why it is unavailable)."""
    npm = shutil.which("npm")
    if shutil.which("node") is None or npm is None:
        return None, "node and npm are needed to run s3rver; not found on PATH"
    module = CACHE / "node_modules" / "s3rver"
    if _installed(module):
        return module, ""
    cmd = [npm, "install", "--no-audit", "--no-fund", "--prefix", str(CACHE), f"s3rver@{S3RVER_VERSION}"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    except subprocess.TimeoutExpired:
        return None, f"`npm install s3rver@{S3RVER_VERSION}` did not finish in 300 s (no network?)"
    if r.returncode != 0 or not _installed(module):
        return None, f"`npm install s3rver@{S3RVER_VERSION}` failed: {(r.stderr or r.stdout).strip()[-300:]}"
    return module, ""


@contextmanager
def s3rver_endpoint(directory: Path) -> Iterator[str]:
    """Start s3rver storing its buckets in `directory`; yield its endpoint URL. Skips when it is unavailable."""
    module, reason = s3rver_module()
    if module is None:
        print(f"skipping: {reason}")
        pytest.skip(reason)
    node = shutil.which("node") or "node"
    proc = subprocess.Popen(
        [node, "-e", _START, str(module), str(directory)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)  # start-up only; no assertion depends on timing
        line = proc.stdout.readline() if ready else ""
        if not line:
            proc.kill()
            pytest.fail(f"s3rver did not start: {proc.stderr.read()[-500:]}")
        yield f"http://127.0.0.1:{json.loads(line)['port']}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
