"""Preparation: the declared sources (params `sources:`) become one dataset of editing tasks.

Every row is decoded, turned upright by its EXIF orientation, converted to RGB (CMYK, palette, alpha over white,
16-bit grey scaled to 8 bits), resized to at most `prepare.max_pixels` keeping the aspect ratio, with both sides
rounded down to a multiple of `prepare.size_multiple`, and stored once as PNG in a content-addressed image store
(`editthinker.images`). A row that is missing, empty, undecodable, smaller than `prepare.min_side` or without an
instruction goes to `quarantine.jsonl` with the reason; the rest goes on. Rows with the same image bytes and the
same normalised instruction are one task (duplicates are dropped and counted; across sources the first declared
source keeps it). A task id is a hash of that content, so reordering or re-exporting a source changes no id, and
limits and mixing by weight are seeded choices over task ids, so the dataset is the same whatever the order of
a source's rows.

Output folder (written atomically, `storage.atomic_dir`):
  tasks/        parquet shards of TASK_SCHEMA + manifest.json (records layout)
  images/       the image store: shards of {sha256, bytes, width, height, format} + manifest.json
  quarantine.jsonl   one line per rejected row: {source, row, ref, reason}
  prepared.json      counts per source, quarantine reasons, the dataset sha256 (tasks + images) and lineage
Memory holds each accepted task's small record (not its image): images wait in a staging folder on disk.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import shutil
import unicodedata
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image, ImageOps

from editthinker.config import Params, PrepareConfig
from editthinker.images import ImageStore, ShardWriter, sha256_bytes, write_image_store
from editthinker.lineage import code_version
from editthinker.records import iter_rows
from editthinker.sources import RawRow, open_source
from editthinker.storage import IntegrityError, atomic_dir, read_manifest, sha256_file, write_json

SECTIONS = ("world", "s3", "sources", "prepare")
TASK_SCHEMA = pa.schema(
    [
        ("task_id", pa.string()),  # hash of the image bytes and the normalised instruction
        ("source", pa.string()),  # the declared source's name
        ("source_id", pa.string()),  # the row's own id in its source ("" when the source has none)
        ("instruction", pa.string()),
        ("image_sha256", pa.string()),  # the prepared image, in images/
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("task_type", pa.string()),
        ("reference", pa.string()),  # privileged reference (synthetic sources: the world's target scene), else null
        ("metadata", pa.string()),  # JSON object of the source's own fields ("{}" for real data)
    ]
)


class BadImage(ValueError):
    """An image that cannot be used; the message is the quarantine reason."""


def normalise_instruction(text: str) -> str:
    """NFKC, whitespace runs to one space, trimmed: the instruction as stored."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


def task_id_of(image: bytes, instruction: str) -> str:
    """The task's id: its content (image bytes, instruction normalised and case-folded), not its position."""
    key = f"{sha256_bytes(image)}\n{normalise_instruction(instruction).casefold()}"
    return "t" + hashlib.sha256(key.encode()).hexdigest()[:24]


def target_size(width: int, height: int, max_pixels: int, multiple: int) -> tuple[int, int]:
    """At most `max_pixels`, aspect ratio kept, each side rounded down to a multiple of `multiple`."""
    scale = min(1.0, math.sqrt(max_pixels / (width * height)))
    return (max(multiple, int(width * scale) // multiple * multiple),
            max(multiple, int(height * scale) // multiple * multiple))  # fmt: skip


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode.startswith("I;16") or img.mode == "I":
        arr = np.asarray(img).astype(np.int64)
        if img.mode.startswith("I;16") or arr.max() > 255:
            arr = arr >> 8
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode == "F":
        return Image.fromarray(np.clip(np.asarray(img), 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def prepare_image(data: bytes, cfg: PrepareConfig) -> tuple[bytes, int, int]:
    """The PNG bytes, width and height of a source image made ready for the editors; BadImage says why not."""
    if not data:
        raise BadImage("empty image file")
    try:
        opened = Image.open(io.BytesIO(data))
        opened.load()
        img: Image.Image = opened
        img = ImageOps.exif_transpose(img)
        img = to_rgb(img)
    except BadImage:
        raise
    except Exception as exc:  # PIL raises many kinds for bad bytes: all mean the same here
        raise BadImage(f"undecodable image ({type(exc).__name__}: {exc})") from None
    w, h = img.size
    if min(w, h) < cfg.min_side:
        raise BadImage(f"too small: {w}x{h} (prepare.min_side is {cfg.min_side})")
    size = target_size(w, h, cfg.max_pixels, cfg.size_multiple)
    if size != (w, h):
        img = img.resize(size, Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue(), size[0], size[1]


def _order_key(seed: int, task_id: str) -> str:
    return hashlib.sha256(f"{seed}:{task_id}".encode()).hexdigest()


def quotas(available: dict[str, int], weights: dict[str, float], total: int) -> dict[str, int]:
    """Tasks per source for `total` by weight (largest remainder, ties in declared order), capped by what each
    source has; a source's shortfall is not given to the others."""
    w = sum(weights.values())
    exact = {s: total * weights[s] / w for s in available}
    share = {s: int(v) for s, v in exact.items()}
    left = total - sum(share.values())
    for s in sorted(available, key=lambda s: -(exact[s] - share[s]))[:left]:
        share[s] += 1
    return {s: min(share[s], available[s]) for s in available}


def _better(new: dict[str, Any], old: dict[str, Any]) -> bool:
    """Between duplicates of one source, the row kept does not depend on the order rows came in."""
    fields = ("source_id", "task_type", "instruction")
    return tuple(new[f] for f in fields) < tuple(old[f] for f in fields)


def _staged(staging: Path, sha: str) -> Path:
    return staging / sha[:2] / sha


def run(params: Params, out: Path) -> dict[str, Any]:
    """Prepare every declared source into `out`; return the summary written to prepared.json."""
    cfg = params.prepare
    out = Path(out)
    with atomic_dir(out) as tmp:
        staging = tmp / ".staging"
        tasks: dict[str, dict[str, Any]] = {}
        quarantine: list[dict[str, Any]] = []
        counts: dict[str, Counter[str]] = {}
        for src in params.sources:
            c = counts.setdefault(src.name, Counter())
            for raw in open_source(src, params.world, params.s3):
                c["rows"] += 1
                task, reason = _prepare_row(raw, cfg, staging)
                if task is None:
                    c["quarantined"] += 1
                    quarantine.append({"source": raw.source, "row": raw.row, "ref": raw.ref, "reason": reason})
                    continue
                old = tasks.get(task["task_id"])
                if old is None:
                    tasks[task["task_id"]] = task
                    c["accepted"] += 1
                    continue
                c["duplicates"] += 1
                if old["source"] == task["source"] and _better(task, old):
                    tasks[task["task_id"]] = task
        selected = _select(params, tasks, counts)
        for t in selected:
            counts[t["source"]]["selected"] += 1
        (tmp / "tasks").mkdir()
        writer = ShardWriter(tmp / "tasks", TASK_SCHEMA, cfg.rows_per_shard)
        for t in selected:
            writer.add(t)
        tasks_manifest = writer.close({"kind": "tasks"})
        shas = sorted({t["image_sha256"] for t in selected})
        images_manifest = write_image_store(tmp / "images", _staged_images(staging, shas, tasks),
                                            cfg.images_per_shard)  # fmt: skip
        shutil.rmtree(staging, ignore_errors=True)
        quarantine.sort(key=lambda q: (q["source"], q["ref"], q["reason"], q["row"]))
        lines = "".join(json.dumps(q, sort_keys=True) + "\n" for q in quarantine)
        (tmp / "quarantine.jsonl").write_text(lines)
        both = {"tasks": tasks_manifest["dataset_sha256"], "images": images_manifest["dataset_sha256"]}
        summary: dict[str, Any] = {
            "tasks": len(selected),
            "images": images_manifest["rows"],
            "quarantined": len(quarantine),
            "duplicates": sum(c["duplicates"] for c in counts.values()),
            "dataset_sha256": hashlib.sha256(json.dumps(sorted(both.items())).encode()).hexdigest(),
            "parts_sha256": both,
            "quarantine_sha256": sha256_file(tmp / "quarantine.jsonl"),
            "quarantine_reasons": dict(sorted(Counter(_reason_kind(q["reason"]) for q in quarantine).items())),
            "sources": {name: dict(sorted(c.items())) for name, c in counts.items()},
            "lineage": {
                "stage": "prepare",
                "params_sha256": params.section_hash(*SECTIONS),
                "params_sections": list(SECTIONS),
                "params": {k: v for k, v in params.model_dump(mode="json").items() if k in SECTIONS},
                "code_version": code_version("editthinker.prepare"),
                "inputs": {s.name: {"kind": s.kind, "path": s.path, "revision": s.revision} for s in params.sources},
            },
        }
        write_json(tmp / "prepared.json", summary)
    return summary


def _reason_kind(reason: str) -> str:
    return reason.split(" (", 1)[0].split(":", 1)[0]


def _prepare_row(raw: RawRow, cfg: PrepareConfig, staging: Path) -> tuple[dict[str, Any] | None, str]:
    if raw.image is None:
        return None, raw.error or "no image"
    instruction = normalise_instruction(raw.instruction or "")
    if not instruction:
        return None, "empty instruction"
    try:
        png, width, height = prepare_image(raw.image, cfg)
    except BadImage as exc:
        return None, str(exc)
    sha = sha256_bytes(png)
    path = _staged(staging, sha)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
    task = {"task_id": task_id_of(raw.image, instruction), "source": raw.source, "source_id": raw.source_id,
            "instruction": instruction, "image_sha256": sha, "width": width, "height": height,
            "task_type": raw.task_type, "reference": raw.reference, "metadata": raw.metadata}  # fmt: skip
    return task, ""


def _select(params: Params, tasks: dict[str, dict[str, Any]], counts: dict[str, Counter[str]]) -> list[dict[str, Any]]:
    """Per source the `limit` tasks first in the seeded order, then mixed by weight to `prepare.num_tasks`;
    the result in the seeded order (so sources interleave)."""
    seed = params.prepare.seed
    by_source: dict[str, list[dict[str, Any]]] = {s.name: [] for s in params.sources}
    for t in tasks.values():
        by_source[t["source"]].append(t)
    for s in params.sources:
        by_source[s.name].sort(key=lambda t: _order_key(seed, t["task_id"]))
        if s.limit is not None:
            by_source[s.name] = by_source[s.name][: s.limit]
    if params.prepare.num_tasks is not None:
        share = quotas({s.name: len(by_source[s.name]) for s in params.sources},
                       {s.name: s.weight for s in params.sources}, params.prepare.num_tasks)  # fmt: skip
        by_source = {name: rows[: share[name]] for name, rows in by_source.items()}
    picked = [t for rows in by_source.values() for t in rows]
    return sorted(picked, key=lambda t: _order_key(seed, t["task_id"]))


def _staged_images(staging: Path, shas: list[str], tasks: dict[str, dict[str, Any]]) -> Iterator[dict[str, Any]]:
    size = {t["image_sha256"]: (t["width"], t["height"]) for t in tasks.values()}
    for sha in shas:
        w, h = size[sha]
        yield {"sha256": sha, "bytes": _staged(staging, sha).read_bytes(), "width": w, "height": h, "format": "PNG"}


class PreparedDataset:
    """A prepared folder read back: `tasks()` (verified rows), `images` (the store by hash), `summary`."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.summary: dict[str, Any] = json.loads((self.folder / "prepared.json").read_text())
        self.images = ImageStore(self.folder / "images")
        parts = {"tasks": read_manifest(self.folder / "tasks")["dataset_sha256"],
                 "images": read_manifest(self.folder / "images")["dataset_sha256"]}  # fmt: skip
        if parts != self.summary.get("parts_sha256"):
            raise IntegrityError(f"{self.folder}/prepared.json does not name the tasks and images beside it")

    def tasks(self) -> Iterator[dict[str, Any]]:
        return iter_rows(self.folder / "tasks")

    def quarantine(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in (self.folder / "quarantine.jsonl").read_text().splitlines()]
