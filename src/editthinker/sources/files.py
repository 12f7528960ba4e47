"""Sources with image paths: `jsonl` (a file or a folder of *.jsonl), `csv` (a file or a folder of *.csv) and
`imagefolder` (a folder with `metadata.jsonl` or `metadata.csv` naming images relative to it). Paths and image
paths may be local or s3://; relative image paths start from `image_root`, else from the file's folder."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Any

from editthinker.config import S3Config, SourceConfig
from editthinker.sources.rows import RawRow, SourceError, make_row
from editthinker.sources.uri import UriReader


def _parent(uri: str) -> str:
    return uri.rsplit("/", 1)[0] if "/" in uri else "."


def _records(uri: str, text: str, kind: str, name: str) -> Iterator[dict[str, Any] | str]:
    if kind == "jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as exc:
                yield f"{uri} line {n}|not JSON ({exc})"
                continue
            yield rec if isinstance(rec, dict) else f"{uri} line {n}|not a JSON object"
    else:
        yield from csv.DictReader(io.StringIO(text))


def file_rows(cfg: SourceConfig, s3: S3Config) -> Iterator[RawRow]:
    reader = UriReader(s3)
    if cfg.kind == "imagefolder":
        folder = cfg.path.rstrip("/")
        listed = [u for u in reader.list(folder, ("metadata.jsonl", "metadata.csv"))
                  if u.rsplit("/", 1)[-1] in ("metadata.jsonl", "metadata.csv")]  # fmt: skip
        if not listed:
            raise SourceError(f"sources.{cfg.name}.path: {cfg.path} has no metadata.jsonl or metadata.csv")
        files = [(u, "jsonl" if u.endswith(".jsonl") else "csv") for u in listed]
    else:
        suffix = ".jsonl" if cfg.kind == "jsonl" else ".csv"
        try:
            files = [(u, cfg.kind) for u in reader.list(cfg.path, (suffix,))]
        except FileNotFoundError as exc:
            raise SourceError(f"sources.{cfg.name}.path: {exc}") from None
        if not files:
            raise SourceError(f"sources.{cfg.name}.path: no {suffix} file in {cfg.path}")
    row = 0
    for uri, kind in files:
        try:
            text = reader.get(uri).decode("utf-8-sig")
        except FileNotFoundError:
            raise SourceError(f"sources.{cfg.name}.path: {uri} does not exist") from None
        base = _parent(uri) if cfg.kind == "imagefolder" or not cfg.image_root else cfg.image_root
        if kind == "csv":
            header = next(csv.reader(io.StringIO(text)), [])
            for col in ("image", "instruction"):
                if getattr(cfg.columns, col) not in header:
                    raise SourceError(f"sources.{cfg.name}.columns.{col}: {uri} has no column "
                                      f"{getattr(cfg.columns, col)!r} (it has {header})")  # fmt: skip
        for rec in _records(uri, text, kind, cfg.name):
            if isinstance(rec, str):
                ref, _, why = rec.partition("|")
                yield RawRow(cfg.name, row, ref, None, why, None)
            else:
                yield make_row(cfg.name, row, rec, cfg.columns, reader, base)
            row += 1
