"""A content-addressed image store: every image once, named by the sha256 of its encoded bytes.

A store is a folder of parquet shards of {sha256, bytes, width, height, format}, sorted by sha256 across the
shards, plus `manifest.json` in the records layout (row count, every shard's sha256, the dataset's sha256, and
the first and last sha256 each shard holds). Rows elsewhere refer to images by hash; `ImageStore` gives the
bytes or a PIL image of a hash. Shards are plain parquet: pyarrow and Hugging Face `datasets`
(`load_dataset("parquet", data_files=".../images/*.parquet")`) read them as they are.

Writing streams (`ShardWriter` holds one shard's rows at a time, a shard being at most `images_per_shard`
images and about `shard_bytes` bytes); reading verifies every shard against the manifest as it is read
(`storage.read_verified`) and keeps one shard in memory.

Across datasets: a dataset whose rows refer to images by hash names the store they are in, by the store's dataset
sha256, under `images` in its manifest (`store_ref`, `image_ref_of`); no bytes are copied from one dataset to the
next. A stage that needs pixels takes the store as an explicit input and opens it with `open_store_for`, which
fails with `ImageStoreMismatch` when the store given is not the one the dataset names.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import io
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from editthinker.storage import dataset_hash, read_manifest, read_verified, sha256_file, write_json

SHARD_BYTES = 64 << 20  # an image store shard holds about this many bytes of images (at least one image)

IMAGE_SCHEMA = pa.schema(
    [
        ("sha256", pa.string()),  # of `bytes`
        ("bytes", pa.binary()),  # the encoded image
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("format", pa.string()),  # PNG, JPEG, ...
    ]
)
_WRITE_OPTS: dict[str, Any] = dict(
    compression="zstd", compression_level=3, use_dictionary=False, write_statistics=False
)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ShardWriter:
    """Stream rows into parquet shards of `folder` (which must exist); `close` writes the manifest.

    With `key`, shards also record the first and last value of that column (`ranges`), for rows given sorted by
    it. Same rows in the same order give the same bytes."""

    def __init__(self, folder: Path, schema: pa.Schema, rows_per_shard: int, key: str | None = None,
                 row_group_size: int = 64) -> None:  # fmt: skip
        if rows_per_shard < 1:
            raise ValueError("rows_per_shard must be at least 1")
        self.folder, self.schema, self.rows_per_shard, self.key = Path(folder), schema, rows_per_shard, key
        self.row_group_size = row_group_size
        self.files: dict[str, str] = {}
        self.ranges: dict[str, list[str]] = {}
        self.rows = 0
        self._batch: list[dict[str, Any]] = []

        self.max_bytes: int | None = None  # set: a shard is also cut once its rows' `nbytes` reach this
        self._bytes = 0

    def add(self, row: dict[str, Any], nbytes: int = 0) -> None:
        self._batch.append(row)
        self.rows += 1
        self._bytes += nbytes
        if len(self._batch) >= self.rows_per_shard or (self.max_bytes is not None and self._bytes >= self.max_bytes):
            self._flush()

    def _flush(self) -> None:
        name = f"part-{len(self.files):05d}.parquet"
        table = pa.Table.from_pylist(self._batch, schema=self.schema)
        pq.write_table(table, self.folder / name, row_group_size=self.row_group_size, **_WRITE_OPTS)
        self.files[name] = sha256_file(self.folder / name)
        if self.key is not None and self._batch:
            self.ranges[name] = [str(self._batch[0][self.key]), str(self._batch[-1][self.key])]
        self._batch, self._bytes = [], 0

    def close(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        if self._batch or not self.files:
            self._flush()
        manifest: dict[str, Any] = {
            "rows": self.rows,
            "files": self.files,
            "dataset_sha256": dataset_hash(self.files),
            "schema": [f.name for f in self.schema],
            **({"ranges": self.ranges} if self.key is not None else {}),
            **(extra or {}),
        }
        write_json(self.folder / "manifest.json", manifest)
        return manifest


def write_image_store(folder: Path, images: Iterable[dict[str, Any]], images_per_shard: int = 256,
                      shard_bytes: int = SHARD_BYTES) -> dict[str, Any]:  # fmt: skip
    """Write images ({sha256, bytes, width, height, format}, sorted by sha256, each once) into `folder` (created;
    the caller makes the write atomic, e.g. inside `storage.atomic_dir`). Returns the manifest, which also holds
    `image_bytes`: the sum of the images' encoded sizes."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(folder, IMAGE_SCHEMA, images_per_shard, key="sha256")
    writer.max_bytes = shard_bytes
    last = ""
    total = 0
    for row in images:
        sha = row["sha256"]
        if sha <= last:
            raise ValueError(f"images must come sorted by sha256, each once: {sha} after {last}")
        if sha256_bytes(row["bytes"]) != sha:
            raise ValueError(f"image {sha}: its bytes hash to {sha256_bytes(row['bytes'])}")
        writer.add(row, len(row["bytes"]))
        total += len(row["bytes"])
        last = sha
    return writer.close({"kind": "image-store", "image_bytes": total})


def image_record(data: bytes) -> dict[str, Any]:
    """The store row of encoded image bytes: {sha256, bytes, width, height, format} (the header is read, not the
    pixels)."""
    with Image.open(io.BytesIO(data)) as img:
        width, height, fmt = img.width, img.height, img.format or ""
    return {"sha256": sha256_bytes(data), "bytes": data, "width": width, "height": height, "format": fmt}


def merge_stores(folders: Iterable[Path]) -> Iterator[dict[str, Any]]:
    """The images of several stores in sha256 order, each once (each store read one shard at a time)."""
    last = None
    for row in heapq.merge(*(ImageStore(f).iter_images() for f in folders), key=lambda r: str(r["sha256"])):
        if row["sha256"] != last:
            last = row["sha256"]
            yield row


# -- references across datasets ------------------------------------------------------------------------------
class ImageStoreMismatch(ValueError):
    """The image store given to a stage is not the one its dataset refers to."""


def store_ref(store_manifest: dict[str, Any], path: str = "") -> dict[str, Any]:
    """What a dataset's manifest says (key `images`) about the store its rows refer to: the store's dataset
    sha256, its image count and bytes, and where it was written (a hint; the sha256 is what counts)."""
    ref = {"dataset_sha256": store_manifest["dataset_sha256"], "rows": int(store_manifest["rows"]),
           "image_bytes": int(store_manifest.get("image_bytes", 0))}  # fmt: skip
    return {**ref, "path": path} if path else ref


def image_ref_of(data_dir: Path) -> dict[str, Any]:
    """The `images` entry of a dataset's manifest (the store its rows refer to); ValueError when it has none."""
    ref = read_manifest(Path(data_dir)).get("images")
    if not isinstance(ref, dict) or not isinstance(ref.get("dataset_sha256"), str):
        raise ImageStoreMismatch(f"{data_dir}: its manifest names no image store (key 'images')")
    return ref


def carried_ref(data_dir: Path) -> dict[str, Any]:
    """The `images` entry for a dataset made from the one at `data_dir` (same store, no bytes copied): the store's
    sha256 and size, without where it was (the store is not inside the new dataset)."""
    return {k: v for k, v in image_ref_of(data_dir).items() if k != "path"}


def open_store_for(data_dir: Path, images: Path) -> ImageStore:
    """The image store `images`, checked to be the one the dataset at `data_dir` refers to."""
    wanted = image_ref_of(data_dir)["dataset_sha256"]
    if not (Path(images) / "manifest.json").is_file():
        raise ImageStoreMismatch(f"{images}: no image store there (the dataset {data_dir} refers to store {wanted})")
    store = ImageStore(images)
    if store.dataset_sha256 != wanted:
        raise ImageStoreMismatch(
            f"{images}: this image store (dataset sha256 {store.dataset_sha256}) is not the one the dataset "
            f"{data_dir} refers to ({wanted}); pass the store its rows were written against"
        )
    return store


class ImageLookup(Protocol):
    """What reads images by hash: an `ImageStore`, or `ImageBytes` in memory."""

    def bytes_of(self, sha: str) -> bytes: ...


class ImageBytes(dict[str, bytes]):
    """Images in memory by hash (small tools and tests): `add(data)` keeps bytes and gives their sha256."""

    def add(self, data: bytes) -> str:
        sha = sha256_bytes(data)
        self[sha] = data
        return sha

    def bytes_of(self, sha: str) -> bytes:
        if sha not in self:
            raise KeyError(f"image {sha} is not in memory")
        return self[sha]


class ImageStore:
    """Read a store by hash: `bytes_of(sha)`, `image(sha)` (a PIL image), `sha in store`, `len(store)`, and
    `iter_images()` for everything in hash order. Each shard is verified against the manifest when it is read."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        manifest = read_manifest(self.folder)
        if manifest.get("kind") != "image-store":
            raise ValueError(f"{self.folder} is not an image store (manifest kind {manifest.get('kind')!r})")
        self.files: dict[str, str] = manifest["files"]
        self.dataset_sha256: str = manifest["dataset_sha256"]
        self.rows = int(manifest["rows"])
        ranges: dict[str, list[str]] = manifest.get("ranges", {})
        self._shards = sorted((first, last, name) for name, (first, last) in ranges.items())
        self._firsts = [s[0] for s in self._shards]
        self._cached: tuple[str, pa.Table, list[str]] | None = None

    def __len__(self) -> int:
        return self.rows

    def _table(self, name: str) -> tuple[pa.Table, list[str]]:
        if self._cached is None or self._cached[0] != name:
            data = read_verified(self.folder / name, self.files[name])
            table = pq.read_table(pa.BufferReader(data))
            self._cached = (name, table, table.column("sha256").to_pylist())
        return self._cached[1], self._cached[2]

    def _locate(self, sha: str) -> tuple[pa.Table, int] | None:
        i = bisect.bisect_right(self._firsts, sha) - 1
        if i < 0 or sha > self._shards[i][1]:
            return None
        table, shas = self._table(self._shards[i][2])
        j = bisect.bisect_left(shas, sha)
        return (table, j) if j < len(shas) and shas[j] == sha else None

    def __contains__(self, sha: object) -> bool:
        return isinstance(sha, str) and self._locate(sha) is not None

    def record(self, sha: str) -> dict[str, Any]:
        found = self._locate(sha)
        if found is None:
            raise KeyError(f"image {sha} is not in the store {self.folder}")
        table, j = found
        return {name: table.column(name)[j].as_py() for name in IMAGE_SCHEMA.names}

    def bytes_of(self, sha: str) -> bytes:
        data: bytes = self.record(sha)["bytes"]
        return data

    def image(self, sha: str) -> Image.Image:
        img = Image.open(io.BytesIO(self.bytes_of(sha)))
        img.load()
        return img

    def iter_images(self) -> Iterator[dict[str, Any]]:
        for _, _, name in self._shards:
            yield from self._table(name)[0].to_pylist()
