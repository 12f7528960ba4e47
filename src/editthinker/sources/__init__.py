"""User-declared sources of editing tasks (params `sources:`): one reader per kind family, one factory.

`open_source(cfg, world, s3)` yields a source's rows as `RawRow`s (image bytes or why there are none, the
instruction, the row's own id and task type), unjudged: deciding what is a usable row is `editthinker.prepare`'s
work. Kinds: `synthetic` (the world's tasks, rendered), `jsonl` / `csv` / `imagefolder` (image paths, local or
s3://), `parquet` / `arrow` (image bytes), `hf` (a `save_to_disk` folder, or a hub dataset at a pinned revision
through `datasets.load_dataset`). Nothing is downloaded unless a source's path asks for it.
"""

from __future__ import annotations

from collections.abc import Iterator

from editthinker.config import S3Config, SourceConfig, WorldConfig
from editthinker.sources.rows import RawRow, SourceError

__all__ = ["RawRow", "SourceError", "open_source"]


def open_source(cfg: SourceConfig, world: WorldConfig | None = None, s3: S3Config | None = None) -> Iterator[RawRow]:
    """The rows of one source, in the source's own order."""
    if cfg.kind == "synthetic":
        from editthinker.sources.synthetic import synthetic_rows

        return synthetic_rows(cfg, world or WorldConfig())
    if cfg.kind in ("jsonl", "csv", "imagefolder"):
        from editthinker.sources.files import file_rows

        return file_rows(cfg, s3 or S3Config())
    if cfg.kind in ("parquet", "arrow"):
        from editthinker.sources.tables import table_rows

        return table_rows(cfg, s3 or S3Config())
    if cfg.kind == "hf":
        from editthinker.sources.hf import hf_rows

        return hf_rows(cfg, s3 or S3Config())
    raise SourceError(f"sources.{cfg.name}.kind: unknown kind {cfg.kind!r}")
