"""A model registry in a local directory: immutable numbered versions, aliases, and a decision log.

    registry/
      v0001/            a copy of the checkpoint's files; its lineage.json is the checkpoint's lineage
                        plus a `registered` record (checkpoint hash, eval summary hash, metrics)
      v0002/ ...
      aliases.json      {"champion": "v0002"}, replaced atomically
      decisions.jsonl   one JSON line per promotion decision, appended
      .lock             fcntl lock file: one writer at a time

A version directory is written to a temporary sibling and renamed into place, so it appears whole or not at
all. Registering a checkpoint whose content hash (lineage.hash_path) is already registered returns the
existing version. The lock is an advisory POSIX lock: it guards writers on one host's local file system, not
on object stores or NFS without lock support.

A registry whose location is an `s3://bucket/prefix` URI lives on S3 instead (`S3Registry`, through
storage_s3.S3Store; endpoint and region from params `s3`, credentials from the environment only). Under
`s3://bucket/prefix/`:

    artifacts/checkpoints/<sha256>/...   a registered checkpoint's files, content-addressed, uploaded whole
                                         (S3Store.upload_dir: its _COMPLETE marker goes last); the same
                                         checkpoint uploaded twice is one artifact
    aliases/index.json                   {"versions": {"v0001": <registered record>, ...}}: version numbers
                                         are allocated here by compare-and-swap, after the upload, so a
                                         listed version is always complete and no number is given twice
    aliases/champion.json                {"version": "v0002"}, changed only by compare-and-swap
    aliases/decisions.json               {"decisions": [...]}, appended only by compare-and-swap

There is no lock on S3: every change is a conditional write (S3Store.update_alias), so two racing promotions
re-read and decide again instead of overwriting each other. Both storages offer the same small interface
(`RegistryBackend`), and stages/promote.py has the one promotion rule for both.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, Protocol

from editthinker.config import S3Config
from editthinker.lineage import LINEAGE_FILE, hash_path
from editthinker.storage import atomic_dir, write_json
from editthinker.storage_s3 import S3Store

ALIASES_FILE = "aliases.json"
DECISIONS_FILE = "decisions.jsonl"
LOCK_FILE = ".lock"
CHAMPION = "champion"
_VERSION = re.compile(r"^v(\d{4,})$")


class RegistryError(RuntimeError):
    """A registry that is inconsistent or a request it cannot satisfy."""


class Registry:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # --- reading -------------------------------------------------------------------------------------------
    def versions(self) -> list[str]:
        if not self.root.is_dir():
            return []
        found = [p.name for p in self.root.iterdir() if p.is_dir() and _VERSION.match(p.name)]
        return sorted(found, key=lambda v: int(v[1:]))

    def path(self, ref: str) -> Path:
        """The directory of a version, given its name (v0003) or an alias (champion)."""
        version = self.aliases().get(ref, ref)
        p = self.root / version
        if not _VERSION.match(version) or not p.is_dir():
            raise RegistryError(f"{self.root}: no version or alias {ref!r} (versions: {self.versions()})")
        return p

    def lineage(self, ref: str) -> dict[str, Any]:
        return json.loads((self.path(ref) / LINEAGE_FILE).read_text())

    def aliases(self) -> dict[str, str]:
        p = self.root / ALIASES_FILE
        return dict(json.loads(p.read_text())) if p.is_file() else {}

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

    def decisions(self) -> list[dict[str, Any]]:
        p = self.root / DECISIONS_FILE
        if not p.is_file():
            return []
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]

    # --- writing (call inside `locked()`) -----------------------------------------------------------------
    @contextmanager
    def locked(self) -> Iterator[Registry]:
        """Hold the registry's exclusive lock: a second promotion waits until the first is done."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK_FILE, "a+") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield self
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def register(self, checkpoint: Path, registered: dict[str, Any]) -> tuple[str, bool]:
        """Copy a checkpoint in as a new version; return (version, created). An identical one is reused."""
        checkpoint = Path(checkpoint)
        if not checkpoint.is_dir():
            raise RegistryError(f"checkpoint {checkpoint} is not a directory")
        sha = hash_path(checkpoint)
        existing = self.find(sha)
        if existing is not None:
            return existing, False
        versions = self.versions()
        version = f"v{(int(versions[-1][1:]) + 1 if versions else 1):04d}"
        src_lineage = checkpoint / LINEAGE_FILE
        lineage = json.loads(src_lineage.read_text()) if src_lineage.is_file() else {}
        lineage["registered"] = {**registered, "version": version, "checkpoint_sha256": sha}
        with atomic_dir(self.root / version) as tmp:
            shutil.copytree(checkpoint, tmp, dirs_exist_ok=True, symlinks=False)
            if hash_path(tmp) != sha:
                raise RegistryError(f"checkpoint {checkpoint} changed while it was being registered")
            write_json(tmp / LINEAGE_FILE, lineage)
        return version, True

    def transaction(self) -> AbstractContextManager[Any]:
        return self.locked()

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
        with open(self.root / DECISIONS_FILE, "a") as fh:
            fh.write(json.dumps(decision, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


class RegistryBackend(Protocol):
    """What promote needs from a registry, local or on S3."""

    def transaction(self) -> AbstractContextManager[Any]: ...
    def register(self, checkpoint: Path, registered: dict[str, Any]) -> tuple[str, bool]: ...
    def champion(self) -> str | None: ...
    def registered(self, ref: str) -> dict[str, Any]: ...
    def update_champion(self, version: str, beats: Callable[[str | None], bool]) -> str | None: ...
    def log_decision(self, decision: dict[str, Any]) -> None: ...


INDEX_ALIAS = "index"
DECISIONS_ALIAS = "decisions"
CHECKPOINTS = "checkpoints"


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


def open_registry(location: str | Path, s3: S3Config | None = None, client: Any = None) -> Registry | S3Registry:
    """The registry at `location`: an `s3://bucket/prefix` URI (endpoint and region from `s3`), else a local
    directory."""
    parsed = parse_s3_uri(location)
    if parsed is None:
        return Registry(location)
    bucket, prefix = parsed
    base = s3 or S3Config()
    cfg = S3Config(endpoint_url=base.endpoint_url, bucket=bucket, prefix=prefix, region=base.region)
    return S3Registry(S3Store(cfg, client=client))


class S3Registry:
    """The registry on S3 (layout in the module docstring). Safe for concurrent writers on any hosts."""

    def __init__(self, store: S3Store) -> None:
        self.store = store

    # --- reading -------------------------------------------------------------------------------------------
    def _index(self) -> dict[str, dict[str, Any]]:
        value, _ = self.store.get_alias(INDEX_ALIAS)
        return dict((value or {}).get("versions", {}))

    def versions(self) -> list[str]:
        return sorted(self._index(), key=lambda v: int(v[1:]))

    def _version(self, ref: str) -> str:
        version = self.champion() if ref == CHAMPION else ref
        if version is None or version not in self._index():
            raise RegistryError(f"{self.store.key()}: no version or alias {ref!r} (versions: {self.versions()})")
        return version

    def registered(self, ref: str) -> dict[str, Any]:
        return dict(self._index()[self._version(ref)])

    def lineage(self, ref: str) -> dict[str, Any]:
        """The checkpoint's lineage.json plus its `registered` record, as in a local registry."""
        with tempfile.TemporaryDirectory() as tmp:
            local = self.download(ref, Path(tmp) / "v")
            lineage: dict[str, Any] = json.loads((local / LINEAGE_FILE).read_text())
        return lineage

    def download(self, ref: str, local: Path) -> Path:
        """A version's files into `local`, its lineage.json extended with the `registered` record."""
        rec = self.registered(ref)
        self.store.download_dir(f"{CHECKPOINTS}/{rec['checkpoint_sha256']}", local)
        src = local / LINEAGE_FILE
        lineage = json.loads(src.read_text()) if src.is_file() else {}
        write_json(src, {**lineage, "registered": rec})
        return Path(local)

    def champion(self) -> str | None:
        value, _ = self.store.get_alias(CHAMPION)
        return None if value is None else str(value["version"])

    def find(self, checkpoint_sha256: str) -> str | None:
        return next((v for v, r in self._index().items() if r.get("checkpoint_sha256") == checkpoint_sha256), None)

    def decisions(self) -> list[dict[str, Any]]:
        value, _ = self.store.get_alias(DECISIONS_ALIAS)
        return list((value or {}).get("decisions", []))

    # --- writing (every change a conditional write; no lock) ------------------------------------------------
    def transaction(self) -> AbstractContextManager[Any]:
        return nullcontext(self)

    def register(self, checkpoint: Path, registered: dict[str, Any]) -> tuple[str, bool]:
        """Upload the checkpoint (content-addressed, a no-op when already there), then give it the next version
        number by compare-and-swap on the index; return (version, created). An identical one is reused."""
        checkpoint = Path(checkpoint)
        if not checkpoint.is_dir():
            raise RegistryError(f"checkpoint {checkpoint} is not a directory")
        sha = hash_path(checkpoint)
        with tempfile.TemporaryDirectory() as tmp:
            staged = Path(tmp) / "checkpoint"
            shutil.copytree(checkpoint, staged, symlinks=False)
            if hash_path(staged) != sha:
                raise RegistryError(f"checkpoint {checkpoint} changed while it was being registered")
            self.store.upload_dir(staged, f"{CHECKPOINTS}/{sha}")
        claim: dict[str, Any] = {}

        def allocate(current: dict[str, Any] | None) -> dict[str, Any] | None:
            versions = dict((current or {}).get("versions", {}))
            for v, rec in versions.items():
                if rec.get("checkpoint_sha256") == sha:
                    claim.update(version=v, created=False)
                    return None
            version = f"v{max((int(v[1:]) for v in versions), default=0) + 1:04d}"
            claim.update(version=version, created=True)
            return {"versions": {**versions, version: {**registered, "version": version, "checkpoint_sha256": sha}}}

        self.store.update_alias(INDEX_ALIAS, allocate)
        return str(claim["version"]), bool(claim["created"])

    def update_champion(self, version: str, beats: Callable[[str | None], bool]) -> str | None:
        """Make `version` champion if `beats(current champion)`, by compare-and-swap: on a lost race `beats` is
        asked again about the new champion. Return the champion afterwards."""
        self._version(version)  # must exist

        def choose(current: dict[str, Any] | None) -> dict[str, Any] | None:
            return {"version": version} if beats(None if current is None else str(current["version"])) else None

        value = self.store.update_alias(CHAMPION, choose)
        return None if value is None else str(value["version"])

    def log_decision(self, decision: dict[str, Any]) -> None:
        self.store.update_alias(
            DECISIONS_ALIAS, lambda cur: {"decisions": [*(cur or {}).get("decisions", []), decision]}
        )
