"""Lineage: what every artifact carries (params hash, code version, input hashes, model ids).

Nothing time- or host-dependent goes in, so the same run twice gives the same lineage.
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
from editthinker.storage import sha256_file

LINEAGE_FILE = "lineage.json"
# Files that describe an artifact rather than make it up: excluded from its content hash, so the same
# weights trained twice hash the same although the run's timings differ (README.md: a registered version's
# model card, written after the hash is checked).
DESCRIPTIVE_FILES = frozenset({LINEAGE_FILE, "metrics.json", "README.md"})


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


def hash_path(path: Path) -> str:
    """A dataset's own sha256 (from its manifest), else the sha256 over a file or a folder's files."""
    path = Path(path)
    manifest = path / "manifest.json"
    if manifest.is_file():
        return str(json.loads(manifest.read_text())["dataset_sha256"])
    h = hashlib.sha256()
    files = (
        [path]
        if path.is_file()
        else sorted(p for p in path.rglob("*") if p.is_file() and p.name not in DESCRIPTIVE_FILES)
    )
    for p in files:
        h.update(str(p.relative_to(path) if p != path else p.name).encode())
        h.update(bytes.fromhex(sha256_file(p)))
    return h.hexdigest()


def size_of(path: Path) -> dict[str, int]:
    """How big an input is: a dataset's rows and bytes (from its manifest), else a file's or folder's bytes and
    file count (the files hash_path covers)."""
    path = Path(path)
    manifest = path / "manifest.json"
    if manifest.is_file():
        m = json.loads(manifest.read_text())
        return {"rows": int(m["rows"]), "bytes": sum((path / name).stat().st_size for name in m["files"])}
    files = (
        [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file() and p.name not in DESCRIPTIVE_FILES]
    )
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
