"""What every benchmark module provides, and the small image and judge helpers they share.

A benchmark module loads its items from the distributed layout (`load`), writes and finds an item's final
edit in the layout its official scorer reads (`output_path`, `write_output`, `find_output`), builds the
judge calls of its protocol for one edit (`judge_calls`), turns the parsed answers into an item's scores
(`item_scores`) and aggregates scored items the way its official scripts do (`metrics`, `breakdown`).
"""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from editthinker.config import BenchmarksConfig
from editthinker.protocol import FormatError, load_json_object

# the files of a run folder, besides the edits in the official layout
RUN_FILE, TRACES_FILE, SCORES_FILE, JUDGEMENTS_FILE = "run.json", "traces.jsonl", "scores.json", "judgements.jsonl"


@dataclass(frozen=True)
class BenchItem:
    """One benchmark item: what the editor edits (`load_source`, RGB PNG bytes) with which instruction."""

    item_id: str  # unique within the benchmark; also names the output file
    category: str  # GEdit task_type, ImgEdit edit_type, RISEBench category, KRIS category
    instruction: str
    load_source: Callable[[], bytes] = field(compare=False, repr=False)
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False)  # benchmark-specific fields


@dataclass(frozen=True)
class Loaded:
    items: list[BenchItem]
    excluded: dict[str, str]  # item id -> why it is not part of the run (e.g. KRIS multi-image temporal rows)


@dataclass(frozen=True)
class JudgeCall:
    """One judge request of a benchmark's protocol: chat messages and the parser of the answer.

    `parse` returns named scores or raises FormatError naming what is wrong with the answer.
    """

    name: str
    messages: list[dict[str, Any]]
    parse: Callable[[str], dict[str, float]] = field(compare=False)


@dataclass(frozen=True)
class ScoredItem:
    item_id: str
    category: str
    values: dict[str, float]  # the item's scores (benchmark-specific names)
    tags: dict[str, Any] = field(default_factory=dict)  # grouping fields (subtask, intersection, group)


class Benchmark(Protocol):
    name: str  # registry name: gedit, imgedit, risebench, kris
    title: str  # as papers print it
    headline: str  # the metric papers report
    scale: str  # the headline's range, e.g. "0-10"
    default_judge: str  # the judge model the official scripts call

    def load(self, data: str, cfg: BenchmarksConfig) -> Loaded: ...

    def output_path(self, run_dir: Path, item: BenchItem) -> Path: ...

    def write_output(self, run_dir: Path, item: BenchItem, edited_png: bytes, source_png: bytes) -> None: ...

    def find_output(self, run_dir: Path, item: BenchItem) -> Path | None: ...

    def judge_calls(self, item: BenchItem, edited: bytes, source_png: bytes) -> list[JudgeCall]: ...

    def item_scores(self, item: BenchItem, answers: dict[str, dict[str, float]]) -> ScoredItem: ...

    def metrics(self, scored: list[ScoredItem]) -> dict[str, float]: ...

    def breakdown(self, scored: list[ScoredItem]) -> dict[str, dict[str, dict[str, float]]]: ...


# -- images ----------------------------------------------------------------------------------------------
def open_rgb(data: bytes | Path) -> Image.Image:
    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
        return im.convert("RGB")


def encode(im: Image.Image, fmt: str = "PNG", quality: int = 95) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buf.getvalue()


def png_of(data: bytes | Path) -> bytes:
    """Any image PIL reads (bytes or a file), as RGB PNG bytes (an RGB PNG is returned as it is)."""
    raw = data if isinstance(data, bytes) else Path(data).read_bytes()
    with Image.open(io.BytesIO(raw)) as im:
        if im.format == "PNG" and im.mode == "RGB":
            return raw
        return encode(im.convert("RGB"))


def size_of(data: bytes) -> tuple[int, int]:
    """(width, height) from the image's header, without decoding it."""
    with Image.open(io.BytesIO(data)) as im:
        return im.size


def jpeg_of(data: bytes | Path, max_side: int | None = None, size: tuple[int, int] | None = None) -> bytes:
    """RGB JPEG bytes, resized to `size`, or shrunk so its longer side is at most `max_side`."""
    im = open_rgb(data)
    if size is not None and im.size != size:
        im = im.resize(size, Image.Resampling.LANCZOS)
    if max_side is not None and max(im.size) > max_side:
        im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return encode(im, "JPEG")


def side_by_side(images: list[bytes | Path]) -> bytes:
    """Several images in a row on one canvas (heights matched to the first), as PNG bytes."""
    ims = [open_rgb(x) for x in images]
    h = ims[0].height
    ims = [im if im.height == h else im.resize((max(1, round(im.width * h / im.height)), h)) for im in ims]
    canvas = Image.new("RGB", (sum(im.width for im in ims), h), (255, 255, 255))
    x = 0
    for im in ims:
        canvas.paste(im, (x, 0))
        x += im.width
    return encode(canvas)


def image_part(data: bytes, mime: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64," + base64.b64encode(data).decode()}}


def text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def write_png(path: Path, png: bytes) -> None:
    """An output image, written to a temporary name and renamed (no fsync: a run rewrites every output)."""
    from editthinker.benchmarks.cache import write_atomic

    write_atomic(path, png)


# -- answer parsing --------------------------------------------------------------------------------------
def json_in(raw: str, what: str) -> dict[str, Any]:
    """The JSON object of an answer: the whole answer (a ```json fence tolerated), else the last {...} in it."""
    try:
        return load_json_object(raw, what)
    except FormatError:
        for m in reversed(list(re.finditer(r"\{[^{}]*\}", raw, re.DOTALL))):
            try:
                d = json.loads(m.group(0))
            except json.JSONDecodeError:
                continue
            if isinstance(d, dict):
                return d
        raise FormatError(f"{what}: no JSON object in the answer") from None


def int_score(value: Any, lo: int, hi: int, what: str) -> int:
    """An integer score in [lo, hi] (a float with no fraction and a digit string are accepted)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int | float) or float(value) != int(value):
        raise FormatError(f"{what}={value!r} is not an integer")
    if not lo <= int(value) <= hi:
        raise FormatError(f"{what}={value} is outside {lo}-{hi}")
    return int(value)


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def by(scored: list[ScoredItem], key: Callable[[ScoredItem], Any]) -> dict[Any, list[ScoredItem]]:
    groups: dict[Any, list[ScoredItem]] = {}
    for s in scored:
        groups.setdefault(key(s), []).append(s)
    return dict(sorted(groups.items(), key=lambda kv: str(kv[0])))
