"""Lineage: what every artifact carries (params hash, code version, input hashes, model ids).

Nothing time- or host-dependent goes in, so the same run twice gives the same lineage. An input's hash is the
hash of what was verified: a dataset's shards are checked against its manifest, a checkpoint's files against
its checksums (storage.CHECKSUMS_FILE), and a mismatch fails naming the file.
"""

from __future__ import annotations

import ast
import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any

from editthinker import __version__
from editthinker.config import Params
from editthinker.storage import (
    CHECKSUMS_FILE,
    DESCRIPTIVE_FILES,
    LINEAGE_FILE,
    MANIFEST_FILE,
    IntegrityError,
    listed_files,
    sha256_file,
    verify_checksums,
    verify_dataset,
)

__all__ = ["DESCRIPTIVE_FILES", "LINEAGE_FILE", "code_version", "hash_path", "make_lineage", "size_of",
           "verify_checkpoint"]  # fmt: skip


PACKAGE_ROOT = Path(__file__).parent  # src/editthinker
_PACKAGE = PACKAGE_ROOT.name


def _module_path(module: str) -> Path | None:
    """The source file of an editthinker module (a package's __init__.py), or None if there is none."""
    parts = module.split(".")[1:]
    if not parts:
        return PACKAGE_ROOT / "__init__.py"
    for candidate in (
        PACKAGE_ROOT.joinpath(*parts[:-1], parts[-1] + ".py"),
        PACKAGE_ROOT.joinpath(*parts, "__init__.py"),
    ):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(path: Path) -> set[str]:
    """editthinker modules that a source file imports anywhere (module level or inside functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == _PACKAGE)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == _PACKAGE:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)  # names that are submodules
    return found


@cache
def module_files(module: str) -> tuple[Path, ...]:
    """The package's source files that `module` runs: itself and everything it imports, transitively, with
    the __init__.py of every package on the way. Sorted; what a stage's code version and dvc deps cover."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # a module's packages run their __init__ first
            path = _module_path(".".join(parts[:i]))
            if path is not None and path not in seen:
                seen.add(path)
                todo.extend(_imported_modules(path))
    if _module_path(module) is None:
        raise ValueError(f"{module} is not a module of {_PACKAGE}")
    return tuple(sorted(seen))


@cache
def code_version(module: str = _PACKAGE) -> str:
    """Package version plus a digest of the source files `module` runs (works without git); for the whole
    package by default."""
    files = sorted(PACKAGE_ROOT.rglob("*.py")) if module == _PACKAGE else module_files(module)
    h = hashlib.sha256()
    for p in files:
        h.update(str(p.relative_to(PACKAGE_ROOT)).encode())
        h.update(p.read_bytes())
    return f"{__version__}+src.{h.hexdigest()[:12]}"


def _folder_hash(files: dict[str, str]) -> str:
    h = hashlib.sha256()
    for name, sha in sorted(files.items(), key=lambda kv: Path(kv[0]).parts):  # (the order paths sort in)
        h.update(name.encode())
        h.update(bytes.fromhex(sha))
    return h.hexdigest()


def hash_path(path: Path) -> str:
    """The content hash of an input, from verified bytes: a dataset's sha256 (its shards checked against its
    manifest), a folder's hash over its files (checked against its checksums when it has them; lineage and
    metrics files excluded), or a file's sha256."""
    path = Path(path)
    if (path / MANIFEST_FILE).is_file():
        return verify_dataset(path)
    if path.is_file():
        return _folder_hash({path.name: sha256_file(path)})
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or folder to hash")
    verified = verify_checksums(path)
    if verified is None:
        verified = {name: sha256_file(path / name) for name in listed_files(path)}
    return _folder_hash(verified)


def verify_checkpoint(path: Path) -> str:
    """A checkpoint folder the stages wrote, verified against its checksums; its content hash (as hash_path)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no checkpoint folder there")
    verified = verify_checksums(path)
    if verified is None:
        raise IntegrityError(f"{path}: a checkpoint without {CHECKSUMS_FILE}, so its files cannot be verified")
    return _folder_hash(verified)


def size_of(path: Path) -> dict[str, int]:
    """How big an input is: a dataset's rows and bytes (from its manifest), else a file's or folder's bytes and
    file count (the files hash_path covers)."""
    path = Path(path)
    manifest = path / "manifest.json"
    if manifest.is_file():
        m = json.loads(manifest.read_text())
        return {"rows": int(m["rows"]), "bytes": sum((path / name).stat().st_size for name in m["files"])}
    files = [path] if path.is_file() else [path / name for name in listed_files(path)]
    return {"files": len(files), "bytes": sum(p.stat().st_size for p in files)}


def make_lineage(stage: str, params: Params, sections: tuple[str, ...], inputs: dict[str, Path],
                 models: dict[str, str]) -> dict[str, Any]:  # fmt: skip
    dump = params.model_dump(mode="json")
    return {
        "stage": stage,
        "params_sha256": params.section_hash(*sections),
        "params_sections": list(sections),
        # the values themselves (what params_sha256 is the hash of), so an artifact names the params that made it
        "params": {k: dump[k] for k in (sections or tuple(dump))},
        "code_version": code_version(f"{_PACKAGE}.stages.{stage}"),
        "inputs": {name: hash_path(p) for name, p in sorted(inputs.items())},
        "input_sizes": {name: size_of(p) for name, p in sorted(inputs.items())},
        "models": dict(sorted(models.items())),
    }
