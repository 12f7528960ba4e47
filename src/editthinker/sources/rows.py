"""A source row before preparation, and how a column's image value becomes bytes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from editthinker.sources.uri import UriReader


class SourceError(ValueError):
    """A source that cannot be read at all (not a bad row): the message names the source and the key."""


@dataclass(frozen=True)
class RawRow:
    source: str
    row: int  # position in the source as read (for the quarantine report only; no id depends on it)
    ref: str  # what names the row in a report: its id, else its image path, else "row N"
    image: bytes | None  # encoded image bytes; None when `error` says why there are none
    error: str | None
    instruction: str | None
    source_id: str = ""
    task_type: str = ""
    reference: str | None = None  # a privileged reference (the synthetic world's target scene JSON); None: real data
    metadata: str = "{}"  # a JSON object of the source's own fields (the synthetic world: op, style, source scene)


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def make_row(source: str, row: int, record: dict[str, Any], columns: Any, reader: UriReader | None,
             base: str | Path | None) -> RawRow:  # fmt: skip
    """A RawRow from one record (a dict of the source's columns), resolving image paths against `base`."""
    value = record.get(columns.image)
    source_id = _text(record.get(columns.id)) if columns.id else ""
    task_type = _text(record.get(columns.task_type)) if columns.task_type else ""
    instruction = record.get(columns.instruction)
    path = ""
    image: bytes | None = None
    error: str | None = None
    if isinstance(value, dict):  # a Hugging Face Image value: {"bytes": ..., "path": ...}
        value = value["bytes"] if value.get("bytes") is not None else value.get("path")
    if isinstance(value, bytes | bytearray | memoryview):
        image = bytes(value)
    elif isinstance(value, str) and value:
        path = value
        if reader is None:
            error = f"column {columns.image!r} holds a path, but this kind takes image bytes"
        else:
            image, error = reader.read(value, base)
    elif columns.image not in record:
        error = f"no column {columns.image!r}"
    else:
        error = "no image"
    ref = source_id or path or f"row {row}"
    return RawRow(source, row, ref, image, error, None if instruction is None else str(instruction),
                  source_id, task_type)  # fmt: skip
