"""Lineage: what every artifact carries (params hash, code version, input hashes, model ids).

Nothing time- or host-dependent goes in, so the same run twice gives the same lineage.
"""

from __future__ import annotations

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
# weights trained twice hash the same although the run's timings differ.
DESCRIPTIVE_FILES = frozenset({LINEAGE_FILE, "metrics.json"})


@cache
def code_version() -> str:
    """Package version plus a digest of the package's source files (works without git)."""
    root = Path(__file__).parent
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.py")):
        h.update(str(p.relative_to(root)).encode())
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


def make_lineage(stage: str, params: Params, sections: tuple[str, ...], inputs: dict[str, Path],
                 models: dict[str, str]) -> dict[str, Any]:  # fmt: skip
    return {
        "stage": stage,
        "params_sha256": params.section_hash(*sections),
        "params_sections": list(sections),
        "code_version": code_version(),
        "inputs": {name: hash_path(p) for name, p in sorted(inputs.items())},
        "models": dict(sorted(models.items())),
    }
