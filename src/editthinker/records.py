"""Parquet records: one schema for trajectories (a row per turn), one for step samples.

A dataset is a directory of parquet shards plus `manifest.json` (row count, every file's sha256 and the
dataset's sha256). Images are PNG bytes inside the rows. Shards are written with fixed writer settings
and no timestamps, so the same rows give the same bytes.

Every read checks what it reads: a shard's bytes are hashed as they are read and must be the sha256 the
manifest lists, and the manifest's dataset sha256 must be the hash of its file list; otherwise
`storage.IntegrityError` names the file. `verify_dataset` gives the dataset sha256 of the verified files
(what lineage records).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
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

__all__ = ["STEP_SAMPLE_SCHEMA", "TRAJECTORY_SCHEMA", "dataset_hash", "iter_rows", "read_manifest", "read_table",
           "shard_paths", "verify_dataset", "write_dataset"]  # fmt: skip

TRAJECTORY_SCHEMA = pa.schema(
    [
        ("trajectory_id", pa.string()),
        ("task_id", pa.string()),
        ("editor", pa.string()),
        ("op", pa.string()),
        ("style", pa.string()),
        ("seed", pa.int64()),
        ("source_scene", pa.string()),
        ("target_scene", pa.string()),  # privileged reference: for the expert and the exact judge only
        ("source_png", pa.binary()),
        ("original_instruction", pa.string()),
        ("turn", pa.int32()),
        ("instruction", pa.string()),  # the instruction this turn's edit used
        ("image_png", pa.binary()),
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
        ("editor", pa.string()),
        ("op", pa.string()),
        ("style", pa.string()),
        ("seed", pa.int64()),
        ("step", pa.int32()),  # t >= 2: the turn whose instruction this sample refines
        ("source_scene", pa.string()),
        ("target_scene", pa.string()),
        ("source_png", pa.binary()),  # I_src
        ("previous_png", pa.binary()),  # I_edit^{t-1}
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

_WRITE_OPTS: dict[str, Any] = dict(compression="zstd", compression_level=3, use_dictionary=True, write_statistics=False)


def write_dataset(out_dir: Path, rows: Iterable[dict[str, Any]], schema: pa.Schema, rows_per_shard: int,
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """Write rows as shards into `out_dir` atomically; return the manifest."""
    if rows_per_shard < 1:
        raise ValueError("rows_per_shard must be at least 1")
    with atomic_dir(out_dir) as tmp:
        files: dict[str, str] = {}
        n = 0
        batch: list[dict[str, Any]] = []

        def flush() -> None:
            name = f"part-{len(files):05d}.parquet"
            table = pa.Table.from_pylist(batch, schema=schema)
            pq.write_table(table, tmp / name, **_WRITE_OPTS)
            files[name] = sha256_file(tmp / name)

        for row in rows:
            batch.append(row)
            n += 1
            if len(batch) >= rows_per_shard:
                flush()
                batch = []
        if batch or not files:
            flush()
        manifest = {
            "rows": n,
            "files": files,
            "dataset_sha256": dataset_hash(files),
            "schema": [f.name for f in schema],
            **(extra or {}),
        }
        write_json(tmp / "manifest.json", manifest)
    return manifest


def shard_paths(data_dir: Path) -> list[Path]:
    return [Path(data_dir) / name for name in sorted(read_manifest(data_dir)["files"])]


def _shards(data_dir: Path, columns: list[str] | None) -> Iterator[pa.Table]:
    files = read_manifest(data_dir)["files"]
    for name in sorted(files):
        data = read_verified(Path(data_dir) / name, files[name])
        yield pq.read_table(pa.BufferReader(data), columns=columns)


def read_table(data_dir: Path, columns: list[str] | None = None) -> pa.Table:
    return pa.concat_tables(list(_shards(data_dir, columns)))


def iter_rows(data_dir: Path, columns: list[str] | None = None) -> Iterator[dict[str, Any]]:
    for table in _shards(data_dir, columns):
        yield from table.to_pylist()
