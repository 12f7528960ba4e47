"""Atomic local writes: an output appears complete under its final name, or not at all.

A stage writes into a temporary sibling and renames it into place when done, so a stage killed midway
leaves the previous output (if any) untouched and no half-written output under the final name.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """The hex sha256 of a file's bytes, read in chunks (memory flat in the file's size)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _temp_sibling(parent: Path, prefix: str, create: Callable[[Path], T]) -> tuple[Path, T]:
    """`create(path)` at a fresh random name under `parent`: (path, what it returned). Like tempfile.mkstemp and
    mkdtemp, but the mode is left to the process umask (0o666 / 0o777 less it): their 0o600 / 0o700 would lock
    the other users of a shared volume out of the final file or folder."""
    for _ in range(100):
        path = parent / f"{prefix}{secrets.token_hex(6)}"
        try:
            return path, create(path)
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name {prefix}* in {parent}")


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield an empty temporary directory; on success it replaces `final` (a directory) whole."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp, _ = _temp_sibling(final.parent, f".{final.name}.tmp-", lambda p: p.mkdir(0o777))
    try:
        yield tmp
        old = None
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, fd = _temp_sibling(path.parent, f".{path.name}.tmp-", lambda p: os.open(p, _NEW_FILE, 0o666))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(Path(path), (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())
