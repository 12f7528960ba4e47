"""Parquet records: one schema for trajectories (a row per turn), one for step samples.

A dataset is a directory of parquet shards plus `manifest.json` (row count, every file's sha256 and the
dataset's sha256). Rows refer to images by sha256; the images live once in a content-addressed image store
(`editthinker.images`) that the manifest names under `images` (generate writes it inside its output, `images/`;
later datasets refer to that same store). Since the rows hold every image's hash, the dataset sha256 pins the
images too. Shards are written with fixed writer settings
and no timestamps, so the same rows give the same bytes.

Every read checks what it reads: a shard's bytes are hashed as they are read and must be the sha256 the
manifest lists, and the manifest's dataset sha256 must be the hash of its file list; otherwise
`storage.IntegrityError` names the file. `verify_dataset` gives the dataset sha256 of the verified files
(what lineage records).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from editthinker.storage import (
    atomic_dir,
    dataset_hash,
    read_manifest,
    read_verified,
    sha256_file,
    verify_dataset,
    write_json,
)

__all__ = ["IMAGE_COLUMNS", "STEP_SAMPLE_SCHEMA", "TRAJECTORY_SCHEMA", "ShardWriter", "dataset_hash", "iter_rows",
           "iter_tables", "iter_trajectory_tables", "read_manifest", "read_table", "shard_paths", "verify_dataset",
           "write_dataset", "write_tables"]  # fmt: skip

TRAJECTORY_SCHEMA = pa.schema(
    [
        ("trajectory_id", pa.string()),
        ("task_id", pa.string()),
        ("source", pa.string()),  # the declared source's name ("world" for the embedded synthetic world)
        ("task_type", pa.string()),  # from the source (the synthetic world: its op)
        ("editor", pa.string()),
        ("seed", pa.int64()),
        ("reference", pa.string()),  # privileged reference (the world's target scene JSON), null on real data:
        # for the expert and the exact judge only, never shown to the thinker
        ("metadata", pa.string()),  # a JSON object of the source's own fields (the world: op, style, scenes)
        ("source_image", pa.string()),  # I_src: sha256 of an image in the dataset's image store
        ("original_instruction", pa.string()),
        ("turn", pa.int32()),
        ("instruction", pa.string()),  # the instruction this turn's edit used
        ("image", pa.string()),  # this turn's edit: sha256 in the image store
        ("semantic", pa.float64()),  # judge scores of this turn's edit
        ("quality", pa.float64()),
        ("overall", pa.float64()),
        ("has_critique", pa.bool_()),  # did the expert critique this turn's edit?
        ("critique_raw", pa.string()),
        ("critique_reason", pa.string()),
        ("critique_satisfied", pa.bool_()),
        ("next_instruction", pa.string()),  # the expert's refined instruction ("" when satisfied)
        ("stop_reason", pa.string()),
    ]
)

STEP_SAMPLE_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("trajectory_id", pa.string()),
        ("task_id", pa.string()),
        ("source", pa.string()),
        ("task_type", pa.string()),
        ("editor", pa.string()),
        ("seed", pa.int64()),
        ("step", pa.int32()),  # t >= 2: the turn whose instruction this sample refines
        ("reference", pa.string()),
        ("metadata", pa.string()),
        ("source_image", pa.string()),  # I_src (sha256 in the image store)
        ("previous_image", pa.string()),  # I_edit^{t-1} (sha256 in the image store)
        ("original_instruction", pa.string()),  # T_s
        ("previous_instruction", pa.string()),  # T_{t-1}
        ("target_reason", pa.string()),  # R_t
        ("target_semantic", pa.float64()),  # judge score of the previous edit
        ("target_quality", pa.float64()),
        ("target_answer", pa.string()),  # refined T_t (= T_{t-1} when the expert was satisfied)
        ("target_text", pa.string()),  # the full thinker answer to learn
        ("trajectory_score_var", pa.float64()),
        ("split", pa.string()),  # sft | rl
    ]
)
IMAGE_COLUMNS = {"trajectories": ("source_image", "image"), "steps": ("source_image", "previous_image")}

ROWS_PER_TABLE = 4096  # write_dataset turns rows into Arrow tables of at most this many rows as they come
_WRITE_OPTS: dict[str, Any] = dict(compression="zstd", compression_level=3, use_dictionary=True, write_statistics=False)


def _write_shard(path: Path, table: pa.Table) -> str:
    """Write one shard; return its sha256. Every writer comes through here: one contiguous chunk per column and
    the plain schema, so the same rows give the same bytes however they were assembled."""
    pq.write_table(table, path, **_WRITE_OPTS)
    return sha256_file(path)


class ShardWriter:
    """Cuts a stream of Arrow tables into shards of exactly `rows_per_shard` rows (the last one shorter) under
    `folder`; holds at most one shard's rows. `files` maps each written shard to its sha256."""

    def __init__(self, folder: Path, schema: pa.Schema, rows_per_shard: int) -> None:
        if rows_per_shard < 1:
            raise ValueError("rows_per_shard must be at least 1")
        self.folder, self.schema, self.rows_per_shard = Path(folder), schema, rows_per_shard
        self.files: dict[str, str] = {}
        self.rows = 0
        self._pending: list[pa.Table] = []
        self._pending_rows = 0

    def write(self, table: pa.Table) -> None:
        table = table.select(self.schema.names).cast(self.schema)
        while len(table):
            take = min(len(table), self.rows_per_shard - self._pending_rows)
            self._pending.append(table.slice(0, take))
            self._pending_rows += take
            self.rows += take
            table = table.slice(take)
            if self._pending_rows >= self.rows_per_shard:
                self._flush()

    def _flush(self) -> None:
        name = f"part-{len(self.files):05d}.parquet"
        table = pa.concat_tables(self._pending) if self._pending else self.schema.empty_table()
        table = table.combine_chunks().replace_schema_metadata(None)
        self.files[name] = _write_shard(self.folder / name, table)
        self._pending, self._pending_rows = [], 0

    def close(self) -> dict[str, str]:
        if self._pending_rows or not self.files:
            self._flush()
        return self.files


def _manifest(files: dict[str, str], rows: int, schema: pa.Schema, extra: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "rows": rows,
        "files": files,
        "dataset_sha256": dataset_hash(files),
        "schema": [f.name for f in schema],
        **(extra or {}),
    }


def write_tables(out_dir: Path, tables: Iterable[pa.Table], schema: pa.Schema, rows_per_shard: int,
                 extra: dict[str, Any] | None = None,
                 beside: Callable[[Path], dict[str, Any]] | None = None) -> dict[str, Any]:  # fmt: skip
    """Write a stream of Arrow tables as shards into `out_dir` atomically (memory: one shard); return the
    manifest. The same rows give the same bytes as `write_dataset`. `beside(folder)`, when given, first writes
    more into the folder being made (e.g. an image store in `images/`) and returns entries for the manifest."""
    with atomic_dir(out_dir) as tmp:
        if beside is not None:
            extra = {**(extra or {}), **beside(tmp)}
        writer = ShardWriter(tmp, schema, rows_per_shard)
        for table in tables:
            writer.write(table)
        files = writer.close()
        manifest = _manifest(files, writer.rows, schema, extra)
        write_json(tmp / "manifest.json", manifest)
    return manifest


def write_dataset(out_dir: Path, rows: Iterable[dict[str, Any]], schema: pa.Schema, rows_per_shard: int,
                  extra: dict[str, Any] | None = None,
                  beside: Callable[[Path], dict[str, Any]] | None = None) -> dict[str, Any]:  # fmt: skip
    """Write rows as shards into `out_dir` atomically; return the manifest. Rows become Arrow tables of at most
    ROWS_PER_TABLE rows as they come, so memory holds one shard in Arrow (not a shard of Python dicts, several
    times larger); the bytes are the same however the rows are batched (`_write_shard`)."""
    if rows_per_shard < 1:
        raise ValueError("rows_per_shard must be at least 1")
    per_table = min(rows_per_shard, ROWS_PER_TABLE)

    def tables() -> Iterator[pa.Table]:
        batch: list[dict[str, Any]] = []
        for row in rows:
            batch.append(row)
            if len(batch) >= per_table:
                yield pa.Table.from_pylist(batch, schema=schema)
                batch = []
        if batch:
            yield pa.Table.from_pylist(batch, schema=schema)

    return write_tables(out_dir, tables(), schema, rows_per_shard, extra, beside)


def shard_paths(data_dir: Path) -> list[Path]:
    return [Path(data_dir) / name for name in sorted(read_manifest(data_dir)["files"])]


def iter_tables(data_dir: Path, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """The dataset one verified shard at a time, in order (memory: one shard's bytes and its decoded columns).
    Each shard's bytes are hashed as they are read and checked against the manifest before any is decoded."""
    files = read_manifest(data_dir)["files"]
    for name in sorted(files):
        data = read_verified(Path(data_dir) / name, files[name])
        yield pq.read_table(pa.BufferReader(data), columns=columns)
        del data


def read_table(data_dir: Path, columns: list[str] | None = None) -> pa.Table:
    return pa.concat_tables(list(iter_tables(data_dir, columns)))


def iter_rows(data_dir: Path, columns: list[str] | None = None) -> Iterator[dict[str, Any]]:
    for table in iter_tables(data_dir, columns):
        yield from table.to_pylist()


def iter_trajectory_tables(data_dir: Path, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """The verified shards of a dataset, re-cut so that no trajectory (a run of consecutive rows with the same
    trajectory_id) spans two tables: a shard's trailing trajectory is carried into the next one."""
    carry: pa.Table | None = None
    for table in iter_tables(data_dir, columns):
        if carry is not None:
            table = pa.concat_tables([carry, table])
        if not len(table):
            carry = table
            continue
        ids = table.column("trajectory_id")
        last = ids[len(ids) - 1]
        start = len(table)
        while start > 0 and ids[start - 1] == last:  # the trailing run: a trajectory has a handful of turns
            start -= 1
        carry = table.slice(start)
        if start:
            yield table.slice(0, start)
    if carry is not None and len(carry):
        yield carry
