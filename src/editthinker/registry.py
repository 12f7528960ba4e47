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
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from editthinker.lineage import LINEAGE_FILE, hash_path
from editthinker.storage import atomic_dir, write_json

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

    def set_alias(self, alias: str, version: str) -> None:
        self.path(version)  # must exist
        write_json(self.root / ALIASES_FILE, {**self.aliases(), alias: version})

    def log_decision(self, decision: dict[str, Any]) -> None:
        with open(self.root / DECISIONS_FILE, "a") as fh:
            fh.write(json.dumps(decision, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
