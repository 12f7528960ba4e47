"""Per-edit and per-critique caches for benchmark runs, so a rerun after a crash only does what is missing.

An edit is keyed by what determines it: the editor (its params entry), the source image, the instruction and
the seed; a thinker's critique by the thinker (its checkpoint or API settings) and its four inputs. An item's
turn t is therefore found again whenever the same editor and thinker reach it, whichever run asks: the editor
alone and every thinker share turn 1, and a run with max turns 8 replays the first turns of a run with 4.
Entries are written to a temporary name and renamed, so a killed run leaves no half entry. The models are
built on the first cache miss only: a finished run replays without loading them.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, Generic, TypeVar

from editthinker.protocol import Verdict
from editthinker.roles import Editor, EditRequest, Thinker, ThinkRequest

T = TypeVar("T")


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary sibling, then rename: a killed process leaves the old file or the new one, never
    half of one. No fsync (it would cost more than an edit of a small image): after a power loss an entry may
    be empty or cut, which `_Store.get` reads as a miss."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


_PNG_END = b"IEND\xaeB`\x82"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def key_of(**parts: Any) -> str:
    return sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode())


def fingerprint(obj: Any) -> str:
    """sha256 of a JSON-able description (a params section, a checkpoint description)."""
    return key_of(described=obj)


def checkpoint_fingerprint(spec: str) -> dict[str, Any]:
    """What identifies a thinker checkpoint without reading all its weights: a folder's file names and sizes
    and the full bytes of its small files (configs, tokenizer, lineage); a model id as itself."""
    path = Path(spec)
    if not path.is_dir():
        return {"model_id": spec}
    files: dict[str, Any] = {}
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        size = p.stat().st_size
        files[str(p.relative_to(path))] = sha256(p.read_bytes()) if size <= 1 << 20 else size
    return {"files": files}


class _Store:
    def __init__(self, root: Path, suffix: str):
        self.root, self.suffix = Path(root), suffix

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}{self.suffix}"

    def get(self, key: str) -> bytes | None:
        try:
            data = self.path(key).read_bytes()
        except FileNotFoundError:
            return None
        if self.suffix == ".png" and not data.endswith(_PNG_END):  # cut short (see write_atomic)
            return None
        return data

    def put(self, key: str, data: bytes) -> None:
        write_atomic(self.path(key), data)


class Counter:
    def __init__(self) -> None:
        self.computed = 0
        self.cached = 0

    def as_dict(self) -> dict[str, int]:
        return {"computed": self.computed, "cached": self.cached}


class _Lazy(Generic[T]):
    def __init__(self, build: Callable[[], T]):
        self._build = build
        self._obj: T | None = None

    def get(self) -> T:
        if self._obj is None:
            self._obj = self._build()
        return self._obj

    @property
    def built(self) -> T | None:
        return self._obj


class CachingEditor:
    """An Editor answering from `<cache>/edits` and asking the real editor (built on first use) for the rest."""

    def __init__(self, build: Callable[[], Editor], editor_fingerprint: str, cache_dir: Path, name: str = "editor"):
        self._inner = _Lazy(build)
        self.fp = editor_fingerprint
        self.store = _Store(Path(cache_dir) / "edits", ".png")
        self.name = name
        self.model_id = f"cached:{editor_fingerprint[:12]}"
        self.counter = Counter()

    def key(self, r: EditRequest) -> str:
        return key_of(editor=self.fp, source=sha256(r.source_png), instruction=r.instruction, seed=r.seed)

    def edit(self, requests: list[EditRequest]) -> list[bytes]:
        keys = [self.key(r) for r in requests]
        out: list[bytes | None] = [self.store.get(k) for k in keys]
        todo = [i for i, png in enumerate(out) if png is None]
        self.counter.cached += len(requests) - len(todo)
        if todo:
            fresh = self._inner.get().edit([requests[i] for i in todo])
            for i, png in zip(todo, fresh, strict=True):
                self.store.put(keys[i], png)
                out[i] = png
            self.counter.computed += len(todo)
        return [png for png in out if png is not None]

    @property
    def inner(self) -> Editor | None:
        return self._inner.built


class CachingThinker:
    """A Thinker answering from `<cache>/critiques`. Only well-formed verdicts are stored: a format failure (an
    API error among them) is asked again on a rerun."""

    def __init__(self, build: Callable[[], Thinker], thinker_fingerprint: str, cache_dir: Path, name: str):
        self._inner = _Lazy(build)
        self.fp = thinker_fingerprint
        self.store = _Store(Path(cache_dir) / "critiques", ".json")
        self.name = name
        self.model_id = f"cached:{thinker_fingerprint[:12]}"
        self.counter = Counter()

    def key(self, r: ThinkRequest) -> str:
        return key_of(
            thinker=self.fp,
            source=sha256(r.source_png),
            previous=sha256(r.previous_png),
            original=r.original_instruction,
            previous_instruction=r.previous_instruction,
        )

    def think(self, requests: list[ThinkRequest]) -> list[Verdict]:
        keys = [self.key(r) for r in requests]
        out: list[Verdict | None] = []
        for k in keys:
            raw = self.store.get(k)
            try:
                out.append(Verdict(**json.loads(raw)) if raw is not None else None)
            except (json.JSONDecodeError, TypeError):  # cut short (see write_atomic): asked again
                out.append(None)
        todo = [i for i, v in enumerate(out) if v is None]
        self.counter.cached += len(requests) - len(todo)
        if todo:
            fresh = self._inner.get().think([requests[i] for i in todo])
            for i, v in zip(todo, fresh, strict=True):
                if v.format_ok:
                    self.store.put(keys[i], json.dumps(asdict(v), sort_keys=True).encode())
                out[i] = v
            self.counter.computed += len(todo)
        return [v for v in out if v is not None]

    @property
    def inner(self) -> Thinker | None:
        return self._inner.built
