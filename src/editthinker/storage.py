"""Local outputs that are whole at every instant, read back only if their bytes are the listed ones.

Writing (`atomic_dir`): a stage writes an output folder into a temporary sibling `.NAME.tmp-*`, then swaps it
with the final path in one step (Linux `renameat2(RENAME_EXCHANGE)`) and removes the previous output, now under
the temporary name. A plain rename is enough when there was no previous output. So after a kill at any point
the final path holds the complete previous output or the complete new one. Where the file system cannot
exchange (not Linux, or a file system without RENAME_EXCHANGE), the fallback is two renames, the previous
output first moved aside to `.NAME.old-*`; a kill between the two leaves that aside, and the next writer of
the output (or `recover`) moves it back before doing anything else. Every writer first removes the temporary
and aside folders that killed writers left.

One writer per output at a time: `writer_lock` (taken by `atomic_dir`, and by stages from their start) holds a
lock file `.NAME.lock` beside the output (filelock) and records who holds it in `.NAME.writer.json`; a second
writer fails at once with `OutputLocked`, naming the holder's pid, host and command. Both files are removed
when the holder is done.

Reading (`verify_files`): a folder's manifest lists the sha256 of its files (a dataset's MANIFEST_FILE, a
checkpoint's CHECKSUMS_FILE); every read checks them, streaming each file once, and fails with `IntegrityError`
naming the file. What a process verified is remembered by the
file's identity (device, inode, size, mtime, ctime), so lineage can record the verified hashes without
reading the files again.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import secrets
import shutil
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock, Timeout

T = TypeVar("T")
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)

# Files that describe an artifact rather than make it up: not in its checksums and not in its content hash,
# so the same weights trained twice hash the same although the run's timings differ (README.md: a registered
# version's model card, written after the hash is checked).
LINEAGE_FILE = "lineage.json"
DESCRIPTIVE_FILES = frozenset({LINEAGE_FILE, "metrics.json", "README.md"})
CHECKSUMS_FILE = "checksums.json"  # a checkpoint's {"files": {relative path: sha256}}
MANIFEST_FILE = "manifest.json"  # a dataset's: {"files": {shard: sha256}, "dataset_sha256": ..., ...}


class IntegrityError(ValueError):
    """A file whose bytes are not the ones its manifest lists (or a manifest that does not hold together)."""


class OutputLocked(RuntimeError):
    """Another writer holds the output; the message names it (pid, host, command)."""


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


# -- verified reads ------------------------------------------------------------------------------------------
_verified: dict[tuple[int, int, int, int, int], str] = {}
_verified_lock = threading.Lock()


def _identity(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _mismatch(path: Path, got: str, expected: str) -> IntegrityError:
    return IntegrityError(
        f"{path}: sha256 {got} is not the {expected} its manifest lists (the file was changed or corrupted)"
    )


def read_verified(path: Path, expected: str, chunk: int = 1 << 20) -> bytes:
    """A file's bytes, read once and hashed on the way; IntegrityError naming the file unless they hash to
    `expected`."""
    path = Path(path)
    h = hashlib.sha256()
    parts = []
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            while block := f.read(chunk):
                h.update(block)
                parts.append(block)
    except FileNotFoundError:
        raise IntegrityError(f"{path}: listed in its manifest but missing") from None
    got = h.hexdigest()
    if got != expected:
        raise _mismatch(path, got, expected)
    with _verified_lock:
        _verified[_identity(st)] = got
    return b"".join(parts)


def verify_file(path: Path, expected: str) -> str:
    """Check a file's sha256 against `expected` (streamed; skipped when this process verified the very same
    file before); return it. IntegrityError names the file."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise IntegrityError(f"{path}: listed in its manifest but missing") from None
    with _verified_lock:
        known = _verified.get(_identity(st))
    if known == expected:
        return known
    got = sha256_file(path)
    if got != expected:
        raise _mismatch(path, got, expected)
    with _verified_lock:
        _verified[_identity(st)] = got
    return got


def verify_files(root: Path, files: dict[str, str]) -> dict[str, str]:
    """Verify every {relative path: sha256} under `root`; return the verified hashes."""
    return {name: verify_file(Path(root) / name, sha) for name, sha in sorted(files.items())}


def dataset_hash(files: dict[str, str]) -> str:
    """A dataset's sha256: the hash of its sorted (shard name, sha256) list."""
    return hashlib.sha256(json.dumps(sorted(files.items())).encode()).hexdigest()


def read_manifest(data_dir: Path) -> dict[str, Any]:
    """A dataset's MANIFEST_FILE, checked to hold together (its dataset sha256 is the hash of its file list)."""
    path = Path(data_dir) / MANIFEST_FILE
    if not path.exists():
        raise FileNotFoundError(f"{data_dir} is not a dataset (no {MANIFEST_FILE})")
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
        ok = isinstance(files, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in files.items())
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"{path}: not a dataset manifest ({type(exc).__name__}: {exc})") from None
    if not ok or any("/" in k or k.startswith(".") for k in files):
        raise IntegrityError(f"{path}: its files are not a mapping of shard names to sha256s")
    if manifest.get("dataset_sha256") != dataset_hash(files):
        raise IntegrityError(f"{path}: dataset_sha256 is not the hash of the files it lists (the manifest was changed)")
    return dict(manifest)


def verify_dataset(data_dir: Path) -> str:
    """Check every shard against the manifest (files this process already verified are not read again);
    return the dataset sha256 of the verified shards."""
    return dataset_hash(verify_files(Path(data_dir), read_manifest(data_dir)["files"]))


def listed_files(folder: Path) -> list[str]:
    """The files that make up a folder (relative paths, sorted): all but the descriptive ones and the checksums."""
    folder = Path(folder)
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and p.name not in DESCRIPTIVE_FILES and p.relative_to(folder) != Path(CHECKSUMS_FILE)
    )


def write_checksums(folder: Path) -> dict[str, str]:
    """Write CHECKSUMS_FILE into `folder`: the sha256 of every file that makes it up (see `listed_files`)."""
    files = {name: sha256_file(Path(folder) / name) for name in listed_files(folder)}
    write_json(Path(folder) / CHECKSUMS_FILE, {"files": files})
    return files


def verify_checksums(folder: Path) -> dict[str, str] | None:
    """Verify a folder against its CHECKSUMS_FILE (None when it has none): every listed file has its sha256 and
    no unlisted file makes up the folder. Returns the verified {relative path: sha256}."""
    folder = Path(folder)
    path = folder / CHECKSUMS_FILE
    if not path.is_file():
        return None
    try:
        files = json.loads(path.read_text())["files"]
        if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
            raise TypeError("files is not a mapping of sha256s")
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"{path}: not a checksums file ({exc})") from None
    extra = sorted(set(listed_files(folder)) - set(files))
    if extra:
        raise IntegrityError(f"{folder / extra[0]}: not listed in {path} (files {extra} were added)")
    return verify_files(folder, files)


# -- atomic output folders -----------------------------------------------------------------------------------
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_NO_EXCHANGE = {errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP}


def _renameat2() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):  # a libc without it (glibc < 2.28, musl < 1.2)
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step (renameat2 with RENAME_EXCHANGE); False where the system cannot."""
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in _NO_EXCHANGE:
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _siblings(final: Path, kind: str) -> list[Path]:
    return sorted(final.parent.glob(f".{final.name}.{kind}-*"))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def recover(final: Path) -> None:
    """Undo what a killed writer of `final` left (call holding its lock): a previous output moved aside by the
    two-rename fallback goes back when nothing took its place; temporary and aside folders are removed."""
    final = Path(final)
    olds = [p for p in _siblings(final, "old") if p.is_dir()]
    if olds and not os.path.lexists(final):
        newest = max(olds, key=lambda p: p.stat().st_mtime_ns)
        os.rename(newest, final)
    for p in _siblings(final, "tmp") + _siblings(final, "old"):
        _remove(p)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, names in os.walk(root):
        for n in names:
            _fsync(Path(dirpath) / n)
        _fsync(Path(dirpath))


def _swap_in(tmp: Path, final: Path) -> None:
    """Put the complete folder `tmp` at `final`; the previous output, if any, ends under a hidden name and is
    removed. `final` holds the old or the new output at every instant (but for the documented fallback)."""
    if not os.path.lexists(final):
        os.rename(tmp, final)  # nothing to replace: one rename
    elif exchange(tmp, final):
        _remove(tmp)  # now the previous output
    else:
        # fallback (no RENAME_EXCHANGE here): a kill between these two renames leaves `final` missing and the
        # previous output at `old`; `recover`, run by the next writer, moves it back
        old = final.with_name(f".{final.name}.old-{os.getpid()}-{tmp.name.rsplit('-', 1)[-1]}")
        os.rename(final, old)
        os.rename(tmp, final)
        _remove(old)
    _fsync(final.parent)


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield an empty temporary directory; on success it replaces `final` (a directory) whole, in one step.

    Holds the output's writer lock throughout (OutputLocked when another writer has it) and first cleans up
    after killed writers (`recover`)."""
    final = Path(final)
    with writer_lock(final):
        recover(final)
        tmp, _ = _temp_sibling(final.parent, f".{final.name}.tmp-", lambda p: p.mkdir(0o777))
        try:
            yield tmp
            _fsync_tree(tmp)
            _swap_in(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


# -- one writer per output -----------------------------------------------------------------------------------
_held = threading.local()


def lock_path(final: Path) -> Path:
    return Path(final).with_name(f".{Path(final).name}.lock")


def holder_path(final: Path) -> Path:
    return Path(final).with_name(f".{Path(final).name}.writer.json")


def _command() -> str:
    return " ".join(sys.argv)[:500]


@contextmanager
def writer_lock(final: Path) -> Iterator[None]:
    """Be the one writer of output `final` (a path beside which the lock lives); reentrant in one thread.

    A second writer, in this or another process, gets OutputLocked naming the holder at once."""
    final = Path(final).absolute()
    final.parent.mkdir(parents=True, exist_ok=True)
    held: dict[str, int] = _held.__dict__.setdefault("depth", {})
    key = str(final)
    if held.get(key):
        held[key] += 1
        try:
            yield
        finally:
            held[key] -= 1
        return
    lock = FileLock(str(lock_path(final)), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise OutputLocked(_held_by(final)) from None
    held[key] = 1
    try:
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": _command()}
        atomic_write_bytes(holder_path(final), (json.dumps(holder, sort_keys=True) + "\n").encode())
        yield
    finally:
        del held[key]
        holder_path(final).unlink(missing_ok=True)
        # removed while still held: a waiter that opened this inode sees it unlinked and does not take it
        lock_path(final).unlink(missing_ok=True)
        lock.release()


def _held_by(final: Path) -> str:
    try:
        h = json.loads(holder_path(final).read_text())
        who = f"pid {h['pid']} on host {h['host']} (command: {h['command']})"
    except (OSError, ValueError, KeyError):
        who = "another writer (its record is not there yet)"
    return f"{final} is being written by {who}; wait for it to finish, or stop it (lock {lock_path(final)})"


# -- small files ---------------------------------------------------------------------------------------------
def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    if not path.parent.is_dir():  # a stat: mkdir on an existing folder costs a failed create (generate writes many)
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
