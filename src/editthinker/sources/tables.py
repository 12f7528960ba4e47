"""Sources with image bytes in the rows: `parquet` (a file or a folder of *.parquet) and `arrow` (a file or a
folder of *.arrow: Arrow IPC stream or file format, as `datasets` writes them). The image column holds bytes,
or a Hugging Face Image struct {bytes, path}. Read a record batch at a time."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from editthinker.config import S3Config, SourceConfig
from editthinker.sources.rows import RawRow, SourceError, make_row
from editthinker.sources.uri import UriReader, is_s3


def _batches(uri: str, kind: str, reader: UriReader) -> Iterator[pa.RecordBatch]:
    source: str | io.BytesIO = io.BytesIO(reader.get(uri)) if is_s3(uri) else uri
    if kind == "parquet":
        yield from pq.ParquetFile(source).iter_batches(batch_size=64)
        return
    f = pa.memory_map(source) if isinstance(source, str) else pa.BufferReader(source.getvalue())
    try:
        stream: pa.ipc.RecordBatchStreamReader | pa.ipc.RecordBatchFileReader = pa.ipc.open_stream(f)
        yield from stream
    except pa.ArrowInvalid:
        f.seek(0)
        file_reader = pa.ipc.open_file(f)
        for i in range(file_reader.num_record_batches):
            yield file_reader.get_batch(i)


def table_rows(cfg: SourceConfig, s3: S3Config) -> Iterator[RawRow]:
    reader = UriReader(s3)
    suffix = ".parquet" if cfg.kind == "parquet" else ".arrow"
    try:
        files = reader.list(cfg.path, (suffix,))
    except FileNotFoundError as exc:
        raise SourceError(f"sources.{cfg.name}.path: {exc}") from None
    if not files:
        raise SourceError(f"sources.{cfg.name}.path: no {suffix} file in {cfg.path}")
    row = 0
    for uri in files:
        for batch in _batches(uri, cfg.kind, reader):
            for col in ("image", "instruction"):
                if getattr(cfg.columns, col) not in batch.schema.names:
                    raise SourceError(f"sources.{cfg.name}.columns.{col}: {uri} has no column "
                                      f"{getattr(cfg.columns, col)!r} (it has {batch.schema.names})")  # fmt: skip
            for rec in batch.to_pylist():
                yield make_row(cfg.name, row, rec, cfg.columns, reader, cfg.image_root or None)
                row += 1
