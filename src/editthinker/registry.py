"""A model registry in a local directory: immutable numbered versions, aliases, and a decision log.

    registry/
      v0001/            a copy of the checkpoint's files; its lineage.json is the checkpoint's lineage
                        plus a `registered` record (checkpoint hash, eval summary hash, metrics, params values,
                        git commit); README.md its model card (model_card.py; its sha256 is in the record)
      v0002/ ...
      counter.json      {"last_version": 2}: the last version number given out, replaced atomically
      aliases.json      {"champion": "v0002"}, replaced atomically
      decisions.jsonl   one JSON line per promotion decision, appended
      .lock             the writers' lock file (the `filelock` package): one writer at a time
      .lock.holder      {"pid", "host", "since"} of the writer holding the lock, while it holds it

A version directory is written to a temporary sibling and renamed into place, so it appears whole or not at
all. Registering a checkpoint whose content hash (lineage.hash_path) is already registered returns the
existing version. Version numbers come from the counter, never from the folders present: a deleted version's
number is not given again, and an alias naming a deleted version is an error, never a pointer to another
checkpoint. The lock guards writers on one host's local file system, not on object stores or NFS without
flock support; a writer that cannot take it within `lock_timeout` seconds fails, naming the holder.

The decision log survives a crash mid-append: a torn last line (no newline, not JSON) is ignored by
`decisions()` and moved to `decisions.jsonl.torn` by the next `log_decision`, so the log stays one JSON object
per line. Every file that does not parse is named in the error.

A registry whose location is an `s3://bucket/prefix` URI lives on S3 instead (`S3Registry`, through
storage_s3.S3Store; endpoint and region from params `s3`, credentials from the environment only). Under
`s3://bucket/prefix/`:

    artifacts/checkpoints/<sha256>/...   a registered checkpoint's files, content-addressed, uploaded whole
                                         (S3Store.upload_dir: its _COMPLETE marker goes last); the same
                                         checkpoint uploaded twice is one artifact
    artifacts/cards/<sha256>/README.md   a version's model card, content-addressed by its own sha256, uploaded
                                         before the version is listed (the record names it: card_sha256)
    aliases/index.json                   {"versions": {"v0001": <registered record>, ...}, "last_version": 1}:
                                         version numbers are allocated here by compare-and-swap, after the
                                         upload, so a listed version is always complete and no number is
                                         given twice
    aliases/champion.json                {"version": "v0002"}, changed only by compare-and-swap
    aliases/decisions.json               {"decisions": [...]}, appended only by compare-and-swap

On S3 every change is a conditional write (S3Store.update_alias), so two racing promotions re-read and decide
again instead of overwriting each other. That holds only on a store that honours conditional writes; see
`S3Registry` for the probe that checks it and the lock that may stand in for it. Both storages offer the same
small interface (`RegistryBackend`), and stages/promote.py has the one promotion rule for both.

Every file and folder is created with the process umask (storage.atomic_dir / atomic_write_bytes, plain open):
a registry on a volume shared by several users or pods stays readable (and writable, with umask 002) by all.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol

from filelock import FileLock, Timeout

from editthinker.config import S3Config
from editthinker.lineage import LINEAGE_FILE, hash_path
from editthinker.model_card import CARD_FILE, card_sha256
from editthinker.storage import atomic_dir, write_json
from editthinker.storage_s3 import ProbeResult, S3Store

log = logging.getLogger(__name__)

ALIASES_FILE = "aliases.json"
COUNTER_FILE = "counter.json"
DECISIONS_FILE = "decisions.jsonl"
TORN_SUFFIX = ".torn"
LOCK_FILE = ".lock"
HOLDER_SUFFIX = ".holder"
CHAMPION = "champion"
LOCK_ENV = "EDITTHINKER_REGISTRY_LOCK"
DEFAULT_LOCK_TIMEOUT_S = 600.0
_VERSION = re.compile(r"^v(\d{4,})$")


class RegistryError(RuntimeError):
    """A registry that is inconsistent or a request it cannot satisfy."""


class ConditionalWritesIgnored(RegistryError):
    """An S3 store that does not honour IfMatch / IfNoneMatch, and no lock configured to stand in for them."""


def version_name(number: int) -> str:
    return f"v{number:04d}"


def version_number(version: str) -> int:
    return int(version[1:])


def read_json(path: Path) -> Any:
    """A JSON file's content; a file that does not parse is named in the error."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RegistryError(f"{path}: not valid JSON ({exc})") from None


def _read_object(path: Path) -> dict[str, Any]:
    value = read_json(path)
    if not isinstance(value, dict):
        raise RegistryError(f"{path}: expected a JSON object, found {value!r:.80}")
    return value


# --- the writers' lock ---------------------------------------------------------------------------------------
def _holder_path(lock_path: Path) -> Path:
    return lock_path.with_name(lock_path.name + HOLDER_SUFFIX)


def _describe_holder(lock_path: Path) -> str:
    holder = _holder_path(lock_path)
    try:
        h = json.loads(holder.read_text())
        return f"held by pid {h['pid']} on host {h['host']} since {h['since']} (from {holder})"
    except (OSError, ValueError, KeyError, TypeError):
        return f"its holder is unknown ({holder} is missing or unreadable)"


@contextmanager
def hold_lock(lock_path: Path, timeout: float) -> Iterator[None]:
    """Hold the exclusive file lock at `lock_path` (flock through `filelock`), recording this process as its
    holder in `<lock_path>.holder`; fail with a RegistryError naming the holder after `timeout` seconds."""
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_path, timeout=timeout, fallback_to_soft=False)
    try:
        lock.acquire()
    except Timeout:
        raise RegistryError(
            f"could not take the registry lock {lock_path} within {timeout:g}s: {_describe_holder(lock_path)}"
        ) from None
    holder = _holder_path(lock_path)
    try:
        since = datetime.now(UTC).isoformat(timespec="seconds")
        write_json(holder, {"pid": os.getpid(), "host": socket.gethostname(), "since": since})
        yield
    finally:
        holder.unlink(missing_ok=True)
        lock.release()


# --- the decision log ----------------------------------------------------------------------------------------
def _parse_decision(path: Path, lineno: int, line: str) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        raise RegistryError(f"{path}, line {lineno}: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise RegistryError(f"{path}, line {lineno}: expected a JSON object, found {value!r:.80}")
    return value


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


def read_decisions(path: Path) -> list[dict[str, Any]]:
    """Every decision in a JSON-lines log. A last line without its newline that does not parse is a write cut
    short (a crash mid-append): it is skipped with a warning. Any other bad line is an error naming the line."""
    if not path.is_file():
        return []
    *lines, tail = path.read_text().split("\n")
    out = [_parse_decision(path, i, line) for i, line in enumerate(lines, 1) if line.strip()]
    if tail.strip() and _is_json(tail):
        out.append(_parse_decision(path, len(lines) + 1, tail))
    elif tail.strip():
        log.warning("%s: ignoring a torn last line (%d bytes, no newline, not JSON)", path, len(tail))
    return out


def _cut_torn_tail(fh: IO[bytes], path: Path) -> None:
    """Before appending to a log opened "a+b": end a complete last line that lacks its newline; move a torn
    one to `<path>.torn` and cut it off, so the next record starts on a line of its own."""
    fh.seek(0)
    data = fh.read()
    if not data or data.endswith(b"\n"):
        return
    start = data.rfind(b"\n") + 1
    tail = data[start:]
    if _is_json(tail.decode(errors="replace")):
        fh.write(b"\n")
        return
    with open(path.with_name(path.name + TORN_SUFFIX), "ab") as torn:
        torn.write(tail + b"\n")
    fh.truncate(start)
    log.warning("%s: moved a torn last line (%d bytes) to %s%s", path, len(tail), path.name, TORN_SUFFIX)


def append_decision(path: Path, decision: dict[str, Any]) -> None:
    with open(path, "a+b") as fh:
        _cut_torn_tail(fh, path)
        fh.write((json.dumps(decision, sort_keys=True) + "\n").encode())
        fh.flush()
        os.fsync(fh.fileno())


def copy_files(src: Path, dst: Path) -> None:
    """Copy a folder's files into `dst` (links followed), every file and folder made anew with the process umask.
    Not shutil.copytree: it copies the source's modes, and transformers saves model.safetensors 0600, which would
    lock the other users of a shared registry out of the weights."""
    for root, _, files in os.walk(src, followlinks=True):
        out = dst / Path(root).relative_to(src)
        out.mkdir(parents=True, exist_ok=True)
        for name in files:
            shutil.copyfile(Path(root) / name, out / name)


# --- the local registry --------------------------------------------------------------------------------------
class Registry:
    def __init__(self, root: str | Path, lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S) -> None:
        self.root = Path(root)
        self.lock_timeout = lock_timeout

    # --- reading -------------------------------------------------------------------------------------------
    def versions(self) -> list[str]:
        if not self.root.is_dir():
            return []
        found = [p.name for p in self.root.iterdir() if p.is_dir() and _VERSION.match(p.name)]
        return sorted(found, key=version_number)

    def path(self, ref: str) -> Path:
        """The directory of a version, given its name (v0003) or an alias (champion)."""
        aliases = self.aliases()
        version = aliases.get(ref, ref)
        p = self.root / version
        if _VERSION.match(version) and p.is_dir():
            return p
        if ref in aliases:
            raise RegistryError(
                f"{self.root / ALIASES_FILE}: alias {ref!r} names {version}, but {p} is missing (deleted?). "
                f"Version numbers are never reused: restore {version} or point {ref!r} at an existing version "
                f"(versions: {self.versions()})"
            )
        raise RegistryError(f"{self.root}: no version or alias {ref!r} (versions: {self.versions()})")

    def lineage(self, ref: str) -> dict[str, Any]:
        return _read_object(self.path(ref) / LINEAGE_FILE)

    def aliases(self) -> dict[str, str]:
        p = self.root / ALIASES_FILE
        if not p.is_file():
            return {}
        value = _read_object(p)
        if not all(isinstance(v, str) for v in value.values()):
            raise RegistryError(f"{p}: expected {{alias: version}} strings, found {value!r:.80}")
        return dict(value)

    def champion(self) -> str | None:
        return self.aliases().get(CHAMPION)

    def registered(self, ref: str) -> dict[str, Any]:
        """The `registered` record of a version (checkpoint hash, metrics, benchmark hash)."""
        return dict(self.lineage(ref).get("registered", {}))

    def find(self, checkpoint_sha256: str) -> str | None:
        """The version holding a checkpoint with this content hash, if any."""
        for v in self.versions():
            if self.lineage(v).get("registered", {}).get("checkpoint_sha256") == checkpoint_sha256:
                return v
        return None

    def last_version(self) -> int:
        """The last version number given out: the counter's, or the highest folder's in a registry older than
        the counter (whichever is larger)."""
        p = self.root / COUNTER_FILE
        counted = _read_object(p).get("last_version") if p.is_file() else 0
        if not isinstance(counted, int) or isinstance(counted, bool) or counted < 0:
            raise RegistryError(f"{p}: 'last_version' must be a whole number >= 0, found {counted!r}")
        return max([counted, *(version_number(v) for v in self.versions())])

    def decisions(self) -> list[dict[str, Any]]:
        return read_decisions(self.root / DECISIONS_FILE)

    def records(self) -> dict[str, dict[str, Any]]:
        """{version: its `registered` record}, every version in order."""
        return {v: self.registered(v) for v in self.versions()}

    def card(self, ref: str) -> str | None:
        """A version's model card (README.md), checked against the sha256 its record names; None if it has none."""
        path = self.path(ref) / CARD_FILE
        if not path.is_file():
            return None
        return _checked_card(str(path), path.read_text(), self.registered(ref))

    @contextmanager
    def local_copy(self, ref: str) -> Iterator[Path]:
        """A folder holding the version's files, model card included (here: the version's own folder; read it,
        do not change it)."""
        yield self.path(ref)

    # --- writing (call inside `transaction()`) ------------------------------------------------------------
    @contextmanager
    def locked(self) -> Iterator[Registry]:
        """Hold the registry's exclusive lock: a second promotion waits until the first is done, for at most
        `lock_timeout` seconds (then a RegistryError names the holder)."""
        with hold_lock(self.root / LOCK_FILE, self.lock_timeout):
            yield self

    def transaction(self) -> AbstractContextManager[Any]:
        return self.locked()

    def _next_version(self) -> str:
        """Take the next version number: the counter moves first, so a crash skips a number, never reuses one."""
        number = self.last_version() + 1
        write_json(self.root / COUNTER_FILE, {"last_version": number})
        return version_name(number)

    def register(
        self, checkpoint: Path, sha256: str, registered: dict[str, Any], card: str | None = None
    ) -> tuple[str, bool]:
        """Copy a checkpoint in as a new version, with `card` as its README.md; return (version, created).
        `sha256` is the checkpoint's content hash (lineage.hash_path) as the caller checked it; the copy must
        have it. An identical one is reused (its card is kept)."""
        checkpoint = Path(checkpoint)
        if not checkpoint.is_dir():
            raise RegistryError(f"checkpoint {checkpoint} is not a directory")
        existing = self.find(sha256)
        if existing is not None:
            return existing, False
        src_lineage = checkpoint / LINEAGE_FILE
        lineage = _read_object(src_lineage) if src_lineage.is_file() else {}
        version = self._next_version()
        lineage["registered"] = {**_with_card(registered, card), "version": version, "checkpoint_sha256": sha256}
        with atomic_dir(self.root / version) as tmp:
            copy_files(checkpoint, tmp)
            if hash_path(tmp) != sha256:
                raise RegistryError(f"checkpoint {checkpoint} is not the one checked (sha256 {sha256}): it changed")
            write_json(tmp / LINEAGE_FILE, lineage)
            if card is not None:  # README.md is descriptive (lineage.DESCRIPTIVE_FILES): the hash is unchanged
                (tmp / CARD_FILE).write_text(card)
        return version, True

    def update_champion(self, version: str, beats: Callable[[str | None], bool]) -> str | None:
        """Make `version` champion if `beats(current champion)`; return the champion afterwards. Call inside
        `transaction()` (the lock makes read-decide-write one step)."""
        current = self.champion()
        if not beats(current):
            return current
        self.set_alias(CHAMPION, version)
        return version

    def set_alias(self, alias: str, version: str) -> None:
        self.path(version)  # must exist
        write_json(self.root / ALIASES_FILE, {**self.aliases(), alias: version})

    def log_decision(self, decision: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        append_decision(self.root / DECISIONS_FILE, decision)


class RegistryBackend(Protocol):
    """What promote and the `registry` commands need from a registry, local or on S3."""

    def transaction(self) -> AbstractContextManager[Any]: ...
    def register(
        self, checkpoint: Path, sha256: str, registered: dict[str, Any], card: str | None = None
    ) -> tuple[str, bool]: ...
    def versions(self) -> list[str]: ...
    def records(self) -> dict[str, dict[str, Any]]: ...
    def champion(self) -> str | None: ...
    def registered(self, ref: str) -> dict[str, Any]: ...
    def card(self, ref: str) -> str | None: ...
    def local_copy(self, ref: str) -> AbstractContextManager[Path]: ...
    def decisions(self) -> list[dict[str, Any]]: ...
    def update_champion(self, version: str, beats: Callable[[str | None], bool]) -> str | None: ...
    def log_decision(self, decision: dict[str, Any]) -> None: ...


def _with_card(registered: dict[str, Any], card: str | None) -> dict[str, Any]:
    return registered if card is None else {**registered, "card_sha256": card_sha256(card)}


def _checked_card(where: str, text: str, registered: dict[str, Any]) -> str:
    """The card text, if it is the one the version's record names (card_sha256); a RegistryError otherwise."""
    expected = registered.get("card_sha256")
    if expected is not None and card_sha256(text) != expected:
        raise RegistryError(
            f"{where}: the model card's sha256 is {card_sha256(text)}, but version {registered.get('version')} "
            f"records {expected}: the card was changed after registration"
        )
    return text


INDEX_ALIAS = "index"
DECISIONS_ALIAS = "decisions"
CHECKPOINTS = "checkpoints"
CARDS = "cards"


def parse_s3_uri(location: str | Path) -> tuple[str, str] | None:
    """(bucket, prefix) of an `s3://bucket/prefix` location; None for a local path. `Path("s3://b/p")` reads
    back as "s3:/b/p" (pathlib folds the double slash), so that spelling is accepted too."""
    text = str(location)
    if not text.startswith("s3:/"):
        return None
    bucket, _, prefix = text[len("s3:/") :].lstrip("/").partition("/")
    if not bucket:
        raise RegistryError(f"registry {text!r}: no bucket (expected s3://bucket/prefix)")
    return bucket, prefix.strip("/")


def open_registry(
    location: str | Path, s3: S3Config | None = None, client: Any = None, lock: str | Path | None = None
) -> Registry | S3Registry:
    """The registry at `location`: an `s3://bucket/prefix` URI (endpoint and region from `s3`), else a local
    directory. `lock` (default: the EDITTHINKER_REGISTRY_LOCK environment variable) is the lock file an S3
    registry uses in place of conditional writes on a store that ignores them (see S3Registry)."""
    parsed = parse_s3_uri(location)
    if parsed is None:
        return Registry(location)
    bucket, prefix = parsed
    base = s3 or S3Config()
    cfg = S3Config(endpoint_url=base.endpoint_url, bucket=bucket, prefix=prefix, region=base.region)
    lock = lock if lock is not None else os.environ.get(LOCK_ENV) or None
    return S3Registry(S3Store(cfg, client=client), lock_path=None if lock is None else Path(lock))


class S3Registry:
    """The registry on S3 (layout in the module docstring). Safe for concurrent writers on any hosts, on a store
    that honours conditional writes.

    Writes need conditional writes (IfMatch / IfNoneMatch) to be honoured, and some S3-compatible stores ignore
    them (s3rver stores every write), which would give one version number to two checkpoints and lose decisions.
    So before its first write (`transaction()` or any write method) the registry probes the store once
    (S3Store.probe_conditional_writes). On a store that ignores them it refuses to write
    (ConditionalWritesIgnored), unless `lock_path` is set: then every transaction holds that file lock
    (`hold_lock`) and the store's conditions are not relied on. That lock is only as wide as the file system
    that holds it (one host, or a shared file system with flock), and every writer must use the same file.
    """

    def __init__(
        self, store: S3Store, lock_path: Path | None = None, lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S
    ) -> None:
        self.store = store
        self.lock_path = lock_path
        self.lock_timeout = lock_timeout
        self._probe: ProbeResult | None = None  # the store's answer, once asked
        self._in_lock = False

    # --- reading -------------------------------------------------------------------------------------------
    def _index(self) -> dict[str, Any]:
        value, _ = self.store.get_alias(INDEX_ALIAS)
        return value or {}

    def _versions(self) -> dict[str, dict[str, Any]]:
        return dict(self._index().get("versions", {}))

    def versions(self) -> list[str]:
        return sorted(self._versions(), key=version_number)

    def _version(self, ref: str) -> str:
        version = self.champion() if ref == CHAMPION else ref
        if version is None or version not in self._versions():
            hint = f" (the champion alias names {version}, which is not in the index)" if version != ref else ""
            raise RegistryError(f"{self.store.uri()}: no version or alias {ref!r}{hint} (versions: {self.versions()})")
        return version

    def registered(self, ref: str) -> dict[str, Any]:
        return dict(self._versions()[self._version(ref)])

    def lineage(self, ref: str) -> dict[str, Any]:
        """The checkpoint's lineage.json plus its `registered` record, as in a local registry."""
        with tempfile.TemporaryDirectory() as tmp:
            local = self.download(ref, Path(tmp) / "v")
            return _read_object(local / LINEAGE_FILE)

    def download(self, ref: str, local: Path) -> Path:
        """A version's files into `local`, its lineage.json extended with the `registered` record, its model card
        as README.md (when it has one), as in a local registry."""
        rec = self.registered(ref)
        local = Path(local)
        self.store.download_dir(f"{CHECKPOINTS}/{rec['checkpoint_sha256']}", local)
        src = local / LINEAGE_FILE
        lineage = _read_object(src) if src.is_file() else {}
        write_json(src, {**lineage, "registered": rec})
        card = self.card(ref)
        if card is not None:
            (local / CARD_FILE).write_text(card)
        return local

    @contextmanager
    def local_copy(self, ref: str) -> Iterator[Path]:
        """A temporary folder holding the version's files (`download`), removed afterwards."""
        with tempfile.TemporaryDirectory() as tmp:
            yield self.download(ref, Path(tmp) / "version")

    def records(self) -> dict[str, dict[str, Any]]:
        """{version: its `registered` record}, every version in order (one read of the index)."""
        versions = self._versions()
        return {v: dict(versions[v]) for v in sorted(versions, key=version_number)}

    def card(self, ref: str) -> str | None:
        """A version's model card (README.md), checked against the sha256 its record names; None if it has none."""
        rec = self.registered(ref)
        sha = rec.get("card_sha256")
        if not sha:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            local = self.store.download_dir(f"{CARDS}/{sha}", Path(tmp) / "card")
            return _checked_card(self.store.uri("artifacts", CARDS, sha), (local / CARD_FILE).read_text(), rec)

    def champion(self) -> str | None:
        value, _ = self.store.get_alias(CHAMPION)
        return None if value is None else str(value["version"])

    def find(self, checkpoint_sha256: str) -> str | None:
        versions = self._versions()
        return next((v for v, r in versions.items() if r.get("checkpoint_sha256") == checkpoint_sha256), None)

    def decisions(self) -> list[dict[str, Any]]:
        value, _ = self.store.get_alias(DECISIONS_ALIAS)
        return list((value or {}).get("decisions", []))

    # --- writing (every change a conditional write, or under the configured lock) --------------------------
    def conditional_writes_honoured(self) -> bool:
        """Probe the store once (S3Store.probe_conditional_writes); log what it found."""
        if self._probe is None:
            self._probe = self.store.probe_conditional_writes()
            if not self._probe.honoured:
                log.warning("%s ignores conditional writes: %s", self.store.uri(), self._probe.detail)
        return self._probe.honoured

    def _check_writable(self) -> None:
        """Refuse to write on a store that ignores conditional writes, unless inside the configured lock."""
        if self.conditional_writes_honoured() or self._in_lock:
            return
        detail = self._probe.detail if self._probe is not None else "not probed"
        if self.lock_path is None:
            raise ConditionalWritesIgnored(
                f"{self.store.uri()}: the store does not honour conditional writes ({detail}), so concurrent "
                f"promotions could reuse a version number or lose a decision; refusing to write. Use a store "
                f"that honours IfMatch/IfNoneMatch (AWS S3, MinIO), or set {LOCK_ENV} to a lock file that "
                f"every writer shares"
            )
        raise RegistryError(f"{self.store.uri()}: write outside transaction() on a store that needs the lock")

    @contextmanager
    def transaction(self) -> Iterator[S3Registry]:
        """Check the store (probe), then run the writes: under `lock_path` when one is configured."""
        if self.lock_path is None:
            self._check_writable()
            yield self
            return
        self.conditional_writes_honoured()
        with hold_lock(self.lock_path, self.lock_timeout):
            self._in_lock = True
            try:
                yield self
            finally:
                self._in_lock = False

    def register(
        self, checkpoint: Path, sha256: str, registered: dict[str, Any], card: str | None = None
    ) -> tuple[str, bool]:
        """Upload the checkpoint and its model card (each content-addressed, a no-op when already there), then
        give it the next version number by compare-and-swap on the index; return (version, created). `sha256` is
        the checkpoint's content hash as the caller checked it; the uploaded copy must have it. An identical one
        is reused (its card is kept)."""
        self._check_writable()
        checkpoint = Path(checkpoint)
        if not checkpoint.is_dir():
            raise RegistryError(f"checkpoint {checkpoint} is not a directory")
        with tempfile.TemporaryDirectory() as tmp:
            staged = Path(tmp) / "checkpoint"
            shutil.copytree(checkpoint, staged, symlinks=False)
            if hash_path(staged) != sha256:
                raise RegistryError(f"checkpoint {checkpoint} is not the one checked (sha256 {sha256}): it changed")
            self.store.upload_dir(staged, f"{CHECKPOINTS}/{sha256}")
            if self.find(sha256) is not None:
                card = None  # registered already: it keeps its card
            if card is not None:  # uploaded before the version that names it is listed
                (Path(tmp) / CARDS).mkdir()
                (Path(tmp) / CARDS / CARD_FILE).write_text(card)
                self.store.upload_dir(Path(tmp) / CARDS, f"{CARDS}/{card_sha256(card)}")
        registered = _with_card(registered, card)
        claim: dict[str, Any] = {}
        self.store.update_alias(INDEX_ALIAS, lambda current: _allocate(current, sha256, registered, claim))
        return str(claim["version"]), bool(claim["created"])

    def update_champion(self, version: str, beats: Callable[[str | None], bool]) -> str | None:
        """Make `version` champion if `beats(current champion)`, by compare-and-swap: on a lost race `beats` is
        asked again about the new champion. Return the champion afterwards."""
        self._check_writable()
        self._version(version)  # must exist

        def choose(current: dict[str, Any] | None) -> dict[str, Any] | None:
            return {"version": version} if beats(None if current is None else str(current["version"])) else None

        value = self.store.update_alias(CHAMPION, choose)
        return None if value is None else str(value["version"])

    def log_decision(self, decision: dict[str, Any]) -> None:
        self._check_writable()
        self.store.update_alias(
            DECISIONS_ALIAS, lambda cur: {"decisions": [*(cur or {}).get("decisions", []), decision]}
        )


def _allocate(
    current: dict[str, Any] | None, sha256: str, registered: dict[str, Any], claim: dict[str, Any]
) -> dict[str, Any] | None:
    """The index with `sha256` registered (None: it already is), noting the version in `claim`. The number comes
    from the index's counter, so a version removed from the index does not free its number."""
    index = current or {}
    versions = dict(index.get("versions", {}))
    for v, rec in versions.items():
        if rec.get("checkpoint_sha256") == sha256:
            claim.update(version=v, created=False)
            return None
    last = max([int(index.get("last_version", 0)), *(version_number(v) for v in versions)])
    version = version_name(last + 1)
    claim.update(version=version, created=True)
    versions[version] = {**registered, "version": version, "checkpoint_sha256": sha256}
    return {**index, "versions": versions, "last_version": last + 1}
