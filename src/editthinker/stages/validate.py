"""Validate stage: expectation suites over the trajectory dataset and the two step-sample datasets, streamed.

The suites are data, one function per dataset kind, in great-expectations' vocabulary: every `Expectation`
is a GE expectation type with its column(s), kwargs and description, and `to_great_expectations` builds the
same suite as a `gx.ExpectationSuite` (a test runs GE on a whole small dataset and checks it fails exactly the
expectations and rows this stage reports). The stage itself does not run GE: GE validates one pandas frame
holding the whole dataset (1,000,000 trajectory rows took 66 s and 3.4 GiB) and takes seconds to import.
Instead every expectation is evaluated here with `pyarrow.compute`, batch by batch: the verified shards of a
dataset (each shard's bytes hashed against the manifest before any is decoded, as `records.iter_tables` reads
them) are read `batch_rows` rows at a time, only the columns the suite needs. Memory holds one shard's bytes,
one batch's decoded columns, the first `MAX_ROWS_IN_REPORT` failing rows per expectation and, for the
uniqueness expectations, 8 bytes per row (a 64-bit hash of the key; a second pass over the key columns names
the rows of a duplicated key, and only runs when a hash repeats).

Checks that GE cannot express on its own are computed per batch as extra columns, and the suite expects their
values: every image column (`records.IMAGE_COLUMNS`: sha256s of images in the dataset's image store) names an
image that is in the store and decodes at the width and height the store records, a target text parses,
overall = sqrt(SC * PQ). The image store is the one every dataset names in its manifest (`images`; another store
is a clear error, `images.ImageStoreMismatch`) and is read once per run, shard by shard (each shard verified
against its manifest): every stored image is checked once, by hash, and only its hash (32 bytes) and the result
are kept. The check of one image reads the PNG signature and the IHDR width and height from the header bytes (a
wrong size is rejected without decoding; another format's header through PIL) and then decodes the image in
full, because a truncated or corrupt body can sit behind a valid header. A row's image column is then looked up
once per distinct hash of a batch (parquet's dictionary encoding), with a bounded memo across batches, since a
trajectory's source image repeats in every turn and every step sample; target texts are parsed once per distinct
text the same way. So the cost of a run is its reads plus one decode per distinct image.

Every failure names its rows by the dataset's id columns (trajectory_id + turn, or sample_id), the first
`MAX_ROWS_IN_REPORT` of them; its count is exact. The report (report.json, report.md, lineage.json) is written
whether or not validation passes; on a failure the stage then raises `ValidationFailed`. Inputs are only read.
"""

from __future__ import annotations

import io
import math
import struct
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from editthinker.config import Params
from editthinker.images import ImageStore, ImageStoreMismatch, open_store_for
from editthinker.lineage import LINEAGE_FILE, make_lineage
from editthinker.records import IMAGE_COLUMNS, STEP_SAMPLE_SCHEMA, TRAJECTORY_SCHEMA, read_manifest
from editthinker.stages import sections_of
from editthinker.storage import atomic_dir, read_verified, write_json

if TYPE_CHECKING:
    import pandas as pd

REPORT_FILE = "report.json"
REPORT_MD = "report.md"
MAX_ROWS_IN_REPORT = 1000  # row ids listed per failed expectation in report.json (the count is always exact)
MAX_ROWS_IN_MESSAGE = 10  # row ids named in the exception message, over all failures (at least one each)
MAX_ROWS_PER_FAILURE_IN_MESSAGE = 3
MAX_VALUES_IN_REPORT = 20  # distinct unexpected values (with their counts among the rows listed) per failure
BATCH_ROWS = 16_384  # rows decoded at a time
MEMO_ENTRIES = 65_536  # distinct image hashes / texts whose check result is remembered across batches
SCORE_TOLERANCE = 1e-6
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

DATASETS = ("trajectories", "sft", "rl")
ID_COLUMNS: dict[str, tuple[str, ...]] = {
    "trajectories": ("trajectory_id", "turn"),
    "sft": ("sample_id",),
    "rl": ("sample_id",),
}
# the columns the suites name
_SCORES = ("semantic", "quality", "overall")  # trajectories: the judge's scores of a turn's edit
_TARGET_TEXT = "target_text"  # step samples: the thinker answer to learn
OK_SUFFIX = "_ok"  # computed column of an image column: "<column>_ok"
OVERALL_ERROR = "overall_error"


class ValidationFailed(RuntimeError):
    """Some dataset failed its suite; the report was written before this was raised."""


# --------------------------------------------------------------------------------------------- suites


@dataclass(frozen=True)
class Expectation:
    """One expectation in great-expectations' terms: its type (snake case, e.g. expect_column_values_to_be_between),
    the column it is about (a list for a compound one, None for a table one) and its other kwargs."""

    type: str
    column: str | list[str] | None
    kwargs: dict[str, Any] = field(default_factory=dict)
    description: str | None = None

    def all_kwargs(self) -> dict[str, Any]:
        key = "column_list" if isinstance(self.column, list) else "column"
        return ({key: self.column} if self.column is not None else {}) | self.kwargs


@dataclass
class Suite:
    name: str
    expectations: list[Expectation]
    computed: dict[str, str]  # computed column -> what it checks


def image_columns(name: str) -> list[str]:
    """The columns of dataset kind `name` (trajectories, sft, rl) that name images: sha256s in the image store."""
    return list(IMAGE_COLUMNS["trajectories" if name == "trajectories" else "steps"])


def _exist(columns: list[str]) -> list[Expectation]:
    return [Expectation("expect_column_to_exist", c) for c in columns]


def _not_null(columns: list[str]) -> list[Expectation]:
    return [Expectation("expect_column_values_to_not_be_null", c) for c in columns]


def _between(column: str, lo: float | None, hi: float | None, description: str | None = None) -> Expectation:
    kwargs = {k: v for k, v in (("min_value", lo), ("max_value", hi)) if v is not None}
    return Expectation("expect_column_values_to_be_between", column, kwargs, description)


def _in_set(column: str, values: list[Any], description: str | None = None) -> Expectation:
    return Expectation("expect_column_values_to_be_in_set", column, {"value_set": values}, description)


def _images_ok(name: str) -> tuple[list[Expectation], dict[str, str]]:
    cols = image_columns(name)
    what = {f"{c}{OK_SUFFIX}": f"{c} is in the image store and decodes at its recorded size" for c in cols}
    return [_in_set(c, [True], what[c]) for c in what], what


def trajectory_suite(params: Params) -> Suite:
    """Expectations for the trajectory dataset (records.TRAJECTORY_SCHEMA, one row per turn)."""
    schema = TRAJECTORY_SCHEMA
    images, computed = _images_ok("trajectories")
    ex = _exist(schema.names)
    ex += _not_null(["trajectory_id", "task_id", "turn", "original_instruction", "instruction", "task_type"])
    ex += _not_null([*image_columns("trajectories"), *_SCORES])
    ex += [
        _between("turn", 1, None, "turns count from 1"),
        *(_between(c, 0, 10) for c in _SCORES),
        _between(OVERALL_ERROR, 0, SCORE_TOLERANCE, "overall == sqrt(SC * PQ)"),
        _in_set("editor", [e.name for e in params.editors]),
        *images,
        Expectation("expect_compound_columns_to_be_unique", list(ID_COLUMNS["trajectories"]), {}, "one row per turn"),
    ]
    computed[OVERALL_ERROR] = "|overall - sqrt(semantic * quality)|"
    return Suite("trajectories", ex, computed)


def step_sample_suite(params: Params, split: str) -> Suite:
    """Expectations for one step-sample dataset (records.STEP_SAMPLE_SCHEMA) whose split is `split`."""
    schema = STEP_SAMPLE_SCHEMA
    images, computed = _images_ok(split)
    ex = _exist(schema.names)
    ex += _not_null(["sample_id", "trajectory_id", "task_id", "step", "original_instruction", "task_type"])
    ex += _not_null(["previous_instruction", "target_answer", _TARGET_TEXT, *image_columns(split)])
    ex += _not_null(["target_semantic", "target_quality"])
    ex += [
        _between("step", 2, None, "step 1 has nothing to refine"),
        _between("target_semantic", 0, 10),
        _between("target_quality", 0, 10),
        _in_set("split", [split]),
        _in_set("editor", [e.name for e in params.editors]),
        _in_set(f"{_TARGET_TEXT}{OK_SUFFIX}", [True], f"{_TARGET_TEXT} parses with protocol.parse_thinker_answer"),
        *images,
        Expectation("expect_column_values_to_be_unique", "sample_id"),
    ]
    computed[f"{_TARGET_TEXT}{OK_SUFFIX}"] = f"{_TARGET_TEXT} parses as a thinker answer"
    return Suite(split, ex, computed)


def to_great_expectations(suite: Suite, rows: int | None = None) -> Any:
    """The same suite as a `gx.ExpectationSuite` (with the manifest's row count when given), to run with GE."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    def cls(type_: str) -> Any:
        return getattr(gxe, "".join(part.capitalize() for part in type_.split("_")))

    out = [cls(e.type)(**e.all_kwargs(), description=e.description) for e in suite.expectations]
    if rows is not None:
        out.append(gxe.ExpectTableRowCountToEqual(value=rows, description="manifest rows"))
    return gx.ExpectationSuite(name=suite.name, expectations=out)


# ------------------------------------------------------------------------------------ computed columns


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's signature and IHDR header (no decoding), None when those are not a PNG's."""
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return width, height


class _DistinctCheck:
    """A per-value check applied once per distinct value of a batch column (Arrow dictionary encoding), with a
    memo of the last MEMO_ENTRIES results across batches, keyed by `key(value)`. Nulls check False."""

    def __init__(self, check: Callable[[Any], bool], key: Callable[[Any], Any]) -> None:
        self.check, self.key = check, key
        self._memo: OrderedDict[Any, bool] = OrderedDict()
        self.checked = 0  # values actually checked (not from the memo)

    def _one(self, value: Any) -> bool:
        k = self.key(value)
        ok = self._memo.get(k)
        if ok is None:
            ok = bool(self.check(value))
            self.checked += 1
            self._memo[k] = ok
            if len(self._memo) > MEMO_ENTRIES:
                self._memo.popitem(last=False)
        else:
            self._memo.move_to_end(k)
        return ok

    def __call__(self, column: pa.ChunkedArray) -> pa.Array:
        masks = []
        for chunk in column.chunks:
            encoded = chunk if pa.types.is_dictionary(chunk.type) else chunk.dictionary_encode()
            oks = np.array([self._one(v) for v in encoded.dictionary.to_pylist()] + [False], dtype=bool)
            indices = encoded.indices
            if indices.null_count:
                indices = indices.fill_null(len(encoded.dictionary))
            indices = indices.to_numpy(zero_copy_only=False)
            masks.append(oks[indices])
        return pa.array(np.concatenate(masks) if masks else np.zeros(0, dtype=bool))


def stored_image_ok(record: dict[str, Any]) -> bool:
    """Does an image store row's `bytes` decode at its recorded `width` x `height`? The header first (a PNG's IHDR
    read directly, another format's through PIL), then a full decode: a corrupt body can sit behind a good header."""
    from PIL import Image

    data, size = record.get("bytes"), (record.get("width"), record.get("height"))
    if not isinstance(data, bytes | bytearray):
        return False
    if data.startswith(PNG_SIGNATURE) and png_size(bytes(data)) != size:
        return False
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.size != size:
                return False
            img.load()
    except Exception:  # PIL raises many kinds for bad bytes: all mean the same here
        return False
    return True


class StoreImages:
    """The image store's hashes, each with whether its image decodes at its recorded size: read on first use in one
    pass over the store (each shard read and verified once, each image decoded once); kept as sorted 32-byte
    digests and flags, not images. Without a store (None: it could not be opened) every image fails."""

    def __init__(self, store: ImageStore | None) -> None:
        self.store = store
        self._keys: np.ndarray | None = None
        self._oks = np.zeros(0, dtype=bool)
        self.decoded = 0  # images checked (read and decoded) so far

    def _load(self) -> np.ndarray:
        if self._keys is None:
            keys: list[bytes] = []
            oks: list[bool] = []
            for record in self.store.iter_images() if self.store is not None else ():
                keys.append(bytes.fromhex(record["sha256"]))
                oks.append(stored_image_ok(record))
                self.decoded += 1
            order = np.argsort(np.array(keys, dtype="S32"), kind="stable")  # the store is sorted; be sure
            self._keys = np.array(keys, dtype="S32")[order]
            self._oks = np.array(oks, dtype=bool)[order]
        return self._keys

    def __call__(self, sha: Any) -> bool:
        """Is `sha` (a row's image column) the sha256 of an image in the store that decodes at its recorded size?"""
        if not isinstance(sha, str) or len(sha) != 64:
            return False
        try:
            key = bytes.fromhex(sha)
        except ValueError:
            return False
        keys = self._load()
        i = int(np.searchsorted(keys, np.array(key, dtype="S32")))
        # (numpy drops a digest's trailing zero bytes when it gives one back: pad it again)
        return i < len(keys) and bytes(keys[i]).ljust(32, b"\0") == key and bool(self._oks[i])


def _text_ok(text: str) -> bool:
    from editthinker.protocol import parse_thinker_answer

    return parse_thinker_answer(text).format_ok


class _Computed:
    """Adds a suite's computed columns to a batch (a column whose inputs are absent is left out)."""

    def __init__(self, name: str, images: StoreImages) -> None:
        self.images = {c: _DistinctCheck(images, lambda sha: sha) for c in image_columns(name)}
        self.text = _DistinctCheck(_text_ok, lambda t: t)

    def sources(self, suite: Suite) -> dict[str, list[str]]:
        """computed column -> the columns it is computed from."""
        out = {f"{c}{OK_SUFFIX}": [c] for c in self.images}
        out[OVERALL_ERROR] = list(_SCORES)
        out[f"{_TARGET_TEXT}{OK_SUFFIX}"] = [_TARGET_TEXT]
        return {k: v for k, v in out.items() if k in suite.computed}

    def add(self, batch: pa.Table, suite: Suite) -> pa.Table:
        names = set(batch.column_names)
        for target, sources in self.sources(suite).items():
            if not names.issuperset(sources):
                continue
            if target == OVERALL_ERROR:
                sem, qual, overall = (pc.cast(batch.column(c), pa.float64()) for c in _SCORES)
                value = pc.abs(pc.subtract(overall, pc.sqrt(pc.multiply(sem, qual))))
            elif sources[0] == _TARGET_TEXT:
                value = self.text(batch.column(_TARGET_TEXT))
            else:
                value = self.images[sources[0]](batch.column(sources[0]))
            batch = batch.append_column(target, value)
        return batch


# ---------------------------------------------------------------------------------------- evaluation


class _Unreadable(Exception):
    """A dataset could not be read (missing, changed shard, not parquet)."""


def iter_batches(data_dir: Path, columns: list[str], batch_rows: int,
                 as_dictionary: tuple[str, ...] = ()) -> Iterator[tuple[list[str], pa.Table]]:  # fmt: skip
    """The dataset `batch_rows` rows at a time, in order: (the shard's column names, a table of those of `columns`
    the shard has). Each shard's bytes are read once and checked against the manifest before any is decoded
    (as `records.iter_tables` does); memory holds one shard's bytes and one batch's decoded columns. Columns
    in `as_dictionary` come dictionary-encoded, as parquet stores them (distinct values decoded once)."""
    files = read_manifest(data_dir)["files"]
    for name in sorted(files):
        data = read_verified(Path(data_dir) / name, files[name])
        names = pq.read_schema(pa.BufferReader(data)).names
        present = [c for c in columns if c in names] or names[:1]  # (one column at least: the rows still count)
        shard = pq.ParquetFile(pa.BufferReader(data), read_dictionary=[c for c in as_dictionary if c in present])
        empty = True
        for batch in shard.iter_batches(batch_size=batch_rows, columns=present, use_threads=False):
            empty = False
            yield names, pa.Table.from_batches([batch])
        if empty:
            yield names, shard.schema_arrow.empty_table().select(present)
        del shard, data


def _guarded(it: Iterator[Any]) -> Iterator[Any]:
    """`it`, with any exception of the reading turned into _Unreadable."""
    while True:
        try:
            item = next(it)
        except StopIteration:
            return
        except Exception as exc:
            raise _Unreadable(f"{type(exc).__name__}: {exc}") from exc
        yield item


@dataclass
class _Tally:
    """What one expectation found so far."""

    expectation: Expectation
    unexpected: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)
    values: list[Any] = field(default_factory=list)
    error: str | None = None
    observed: Any = None
    success: bool | None = None  # None: decided by `unexpected` and `error`

    def add(self, batch: pa.Table, mask: np.ndarray, id_cols: list[str], offset: int) -> None:
        idx = np.flatnonzero(mask)
        self.unexpected += len(idx)
        room = MAX_ROWS_IN_REPORT - len(self.rows)
        if not len(idx) or room <= 0:
            return
        take = pa.array(idx[:room])
        self.rows += _row_ids(batch, take, id_cols, offset)
        column = self.expectation.column
        if isinstance(column, str):
            self.values += batch.column(column).take(take).to_pylist()

    def missing(self, columns: list[str]) -> None:
        self.error = self.error or f"column(s) {columns} not in the dataset"

    @property
    def ok(self) -> bool:
        if self.success is not None:
            return self.success
        return self.error is None and self.unexpected == 0


def _row_ids(batch: pa.Table, take: pa.Array, id_cols: list[str], offset: int) -> list[dict[str, Any]]:
    if id_cols:
        return batch.select(id_cols).take(take).to_pylist()
    return [{"index": offset + int(i)} for i in take.to_pylist()]


def _mask(e: Expectation, batch: pa.Table) -> np.ndarray:
    """The rows of `batch` that break a row-wise expectation `e`."""
    col = batch.column(e.column)  # type: ignore[arg-type]
    if e.type == "expect_column_values_to_not_be_null":
        bad = pc.is_null(col, nan_is_null=pa.types.is_floating(col.type))
    elif e.type == "expect_column_values_to_be_between":
        lo, hi = e.kwargs.get("min_value"), e.kwargs.get("max_value")
        parts = [pc.less(col, lo)] if lo is not None else []
        parts += [pc.greater(col, hi)] if hi is not None else []
        bad = parts[0] if len(parts) == 1 else pc.or_(parts[0], parts[1])
    elif e.type == "expect_column_values_to_be_in_set":
        bad = pc.invert(pc.is_in(col, value_set=pa.array(e.kwargs["value_set"], type=col.type)))
    else:
        raise ValueError(f"validate: expectation {e.type} is not row-wise")
    if bad.null_count:
        bad = pc.fill_null(bad, False)  # nulls are not judged (expect_column_values_to_not_be_null does)
    return np.asarray(bad.to_numpy(zero_copy_only=False), dtype=bool)


def _key_hashes(batch: pa.Table, columns: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(row positions, 64-bit hashes of the key `columns`) of the rows whose key is not all null."""
    import pandas as pd

    frame = batch.select(columns).to_pandas()
    keep = ~frame.isna().all(axis=1).to_numpy()
    hashes = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    return np.flatnonzero(keep), hashes[keep]


def _unique_columns(e: Expectation) -> list[str]:
    return list(e.column) if isinstance(e.column, list) else [str(e.column)]


def _needed(suite: Suite, computed: _Computed, id_cols: list[str]) -> list[str]:
    sources = computed.sources(suite)
    need: list[str] = list(id_cols)
    for e in suite.expectations:
        if e.type == "expect_column_to_exist":
            continue
        for c in _unique_columns(e) if e.column is not None else []:
            need += sources.get(c, [c])
    return list(dict.fromkeys(need))


def evaluate(suite: Suite, images: StoreImages, path: Path, name: str,
             batch_rows: int = BATCH_ROWS) -> dict[str, Any]:  # fmt: skip
    """Stream dataset `path` through `suite` (its images looked up in `images`); the dataset's entry of the report."""
    try:
        manifest = read_manifest(path)
    except Exception as exc:
        raise _Unreadable(f"{type(exc).__name__}: {exc}") from exc
    computed = _Computed(name, images)
    id_cols = list(ID_COLUMNS[name])
    tallies = [_Tally(e) for e in suite.expectations]
    unique = [t for t in tallies if t.expectation.type.endswith("_to_be_unique")]
    rowwise = [t for t in tallies if t not in unique and t.expectation.type != "expect_column_to_exist"]
    hashes: dict[int, list[np.ndarray]] = {id(t): [] for t in unique}
    seen_columns: set[str] | None = None
    rows = batches = 0
    distinct = (*computed.images, _TARGET_TEXT)  # read as parquet stores them: each distinct value decoded once
    for names, batch in _guarded(iter_batches(path, _needed(suite, computed, id_cols), batch_rows, distinct)):
        seen_columns = set(names) if seen_columns is None else seen_columns & set(names)
        ids = [c for c in id_cols if c in batch.column_names]
        batch = computed.add(batch, suite)
        have = set(batch.column_names)
        for t in rowwise:
            if t.expectation.column not in have:
                t.missing([str(t.expectation.column)])
            else:
                t.add(batch, _mask(t.expectation, batch), ids, rows)
        for t in unique:
            cols = _unique_columns(t.expectation)
            if not have.issuperset(cols):
                t.missing(cols)
            else:
                hashes[id(t)].append(_key_hashes(batch, cols)[1])
        rows += len(batch)
        batches += 1
        del batch
    seen_columns = seen_columns or set()
    for t in tallies:
        if t.expectation.type == "expect_column_to_exist" and t.expectation.column not in seen_columns:
            t.error = f"column {t.expectation.column} is not in the dataset"
    for t in unique:
        if t.error is None:
            _name_duplicates(t, np.concatenate(hashes.pop(id(t)) or [np.zeros(0, np.uint64)]), path, id_cols)
    count = _Tally(Expectation("expect_table_row_count_to_equal", None, {"value": int(manifest["rows"])},
                               "manifest rows"), observed=rows, success=rows == int(manifest["rows"]))  # fmt: skip
    tallies.append(count)
    failures = [_failure(t) for t in tallies if not t.ok]
    failures.sort(key=lambda f: (f["expectation"], str(f["column"])))
    return {
        "dataset_sha256": manifest.get("dataset_sha256"),  # not the path: the report must not depend on where it ran
        "success": not failures,
        "rows": rows,
        "id_columns": [c for c in id_cols if c in seen_columns],
        "computed_columns": suite.computed,
        "counts": {
            "rows": rows,
            "batches": batches,
            "expectations": len(tallies),
            "passed": len(tallies) - len(failures),
            "failed": len(failures),
        },  # fmt: skip
        "failures": failures,
    }


def _name_duplicates(t: _Tally, hashes: np.ndarray, path: Path, id_cols: list[str]) -> None:
    """Rows whose key repeats: found by hash, then named (and the hashes confirmed) by a pass over the key and
    id columns of the rows whose hash repeats (only when one does)."""
    values, counts = np.unique(hashes, return_counts=True)
    repeated = values[counts > 1]
    if not len(repeated):
        return
    cols = _unique_columns(t.expectation)
    found: list[tuple[tuple[Any, ...], dict[str, Any]]] = []  # (key, row ids) in dataset order
    offset = 0
    for _, batch in _guarded(iter_batches(path, list(dict.fromkeys([*id_cols, *cols])), BATCH_ROWS)):
        positions, h = _key_hashes(batch, cols)
        hit = positions[np.isin(h, repeated)]
        if len(hit):
            take = pa.array(hit)
            keys = batch.select(cols).take(take).to_pylist()
            ids = _row_ids(batch, take, [c for c in id_cols if c in batch.column_names], offset)
            found += [(tuple(k.values()), r) for k, r in zip(keys, ids, strict=True)]
        offset += len(batch)
    times = Counter(k for k, _ in found)
    dup = [(k, r) for k, r in found if times[k] > 1]
    t.unexpected = len(dup)
    t.rows = [r for _, r in dup[:MAX_ROWS_IN_REPORT]]
    t.values = [k[0] if len(k) == 1 else list(k) for k, _ in dup[:MAX_ROWS_IN_REPORT]]


def _failure(t: _Tally) -> dict[str, Any]:
    e = t.expectation
    counts = Counter(_hashable(_jsonable(v)) for v in t.values).most_common(MAX_VALUES_IN_REPORT)
    return {
        "expectation": e.type,
        "column": e.column,
        "description": e.description,
        "kwargs": {k: _jsonable(v) for k, v in e.all_kwargs().items()},
        "unexpected_count": t.unexpected,
        "observed_value": _jsonable(t.observed),
        "unexpected_values": [{"value": _unhashable(v), "count": int(c)} for v, c in counts],
        "rows": [{k: _jsonable(v) for k, v in r.items()} for r in t.rows],
        "rows_truncated": t.unexpected > len(t.rows),
        "error": t.error,
    }


def _hashable(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def _unhashable(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


# ----------------------------------------------------------------------------------------- the stage


def open_store(paths: dict[str, Path], images_dir: Path) -> ImageStore | None:
    """The image store `images_dir`, checked to be the one every readable dataset names (ImageStoreMismatch
    otherwise, a dataset naming none included); None when no dataset could be read."""
    store = None
    for path in paths.values():
        try:
            store = open_store_for(path, images_dir)
        except ImageStoreMismatch:
            raise
        except Exception:  # noqa: S112 - an unreadable dataset is reported by its own validation
            continue
    return store


def run(params: Params, trajectories: Path, sft: Path, rl: Path, report_dir: Path, images_dir: Path | None = None,
        batch_rows: int = BATCH_ROWS) -> dict:  # fmt: skip
    """Validate the three datasets, write `report_dir`, return the report; raise ValidationFailed on failure.
    Their images are looked up in the image store `images_dir` (default: the trajectories' own, `images/`),
    which must be the one every dataset names (a clear error otherwise)."""
    if batch_rows < 1:
        raise ValueError("validate: batch_rows must be at least 1")
    paths = {"trajectories": Path(trajectories), "sft": Path(sft), "rl": Path(rl)}
    images_dir = Path(trajectories) / "images" if images_dir is None else Path(images_dir)
    store = open_store(paths, images_dir)
    images = StoreImages(store)
    suites = {
        "trajectories": trajectory_suite(params),
        "sft": step_sample_suite(params, "sft"),
        "rl": step_sample_suite(params, "rl"),
    }
    results: dict[str, dict[str, Any]] = {}
    for name in DATASETS:
        try:
            results[name] = evaluate(suites[name], images, paths[name], name, batch_rows)
        except _Unreadable as exc:  # a failure of its own, still reported
            results[name] = {
                "path": str(paths[name]),
                "success": False,
                "rows": None,
                "error": str(exc),
                "counts": {},
                "failures": [],
            }

    readable = {name: p for name, p in paths.items() if "error" not in results[name]}
    report = {
        "success": all(r["success"] for r in results.values()),
        "datasets": results,
        "image_store_sha256": store.dataset_sha256 if store is not None else None,
        "images_checked": images.decoded,  # distinct stored images read and decoded (once each)
        # the hashes of the datasets read and verified (an unreadable one is reported above, with its error)
        "lineage": make_lineage("validate", params, sections_of("validate"), {**readable, "images": images_dir}, {}),
    }
    with atomic_dir(Path(report_dir)) as tmp:
        write_json(tmp / REPORT_FILE, report)
        write_json(tmp / LINEAGE_FILE, report["lineage"])
        (tmp / REPORT_MD).write_text(_markdown(report))
    if not report["success"]:
        raise ValidationFailed(_message(results, Path(report_dir) / REPORT_FILE))
    return report


def computed_frame(table: pa.Table, params: Params, name: str, images_dir: Path) -> pd.DataFrame:
    """A whole (small) dataset as one pandas frame with its suite's computed columns, its images looked up in the
    store `images_dir`: what GE validates in `to_great_expectations`'s test."""
    suite = trajectory_suite(params) if name == "trajectories" else step_sample_suite(params, name)
    return _Computed(name, StoreImages(ImageStore(images_dir))).add(table, suite).to_pandas()


def _jsonable(v: Any) -> Any:
    if v is None or isinstance(v, bool | str | int):
        return v
    if isinstance(v, float):
        return None if math.isnan(v) else v
    if isinstance(v, bytes | bytearray):
        return f"<{len(v)} bytes>"
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple | set):
        return [_jsonable(x) for x in v]
    if hasattr(v, "item"):  # numpy scalar
        return _jsonable(v.item())
    return str(v)


def _row_label(row: dict[str, Any]) -> str:
    return "(" + ", ".join(f"{k}={v}" for k, v in row.items()) + ")"


def _failure_label(f: dict[str, Any]) -> str:
    col = f["column"]
    col = ",".join(col) if isinstance(col, list) else col
    return f"{f['expectation']}({col})" if col is not None else f["expectation"]


def _message(results: dict[str, dict[str, Any]], report_path: Path) -> str:
    lines = []
    budget = MAX_ROWS_IN_MESSAGE
    for name, res in results.items():
        if res["success"]:
            continue
        if res.get("error"):
            lines.append(f"{name}: unreadable: {res['error']}")
            continue
        for f in res["failures"]:
            shown = f["rows"][: max(1, min(budget, MAX_ROWS_PER_FAILURE_IN_MESSAGE))]  # each failure names a row
            budget -= len(shown)
            rows = ", ".join(_row_label(r) for r in shown)
            more = f["unexpected_count"] - len(shown) if isinstance(f["unexpected_count"], int) else 0
            detail = f"{f['unexpected_count']} row(s)" if f["rows"] else (f["error"] or f["observed_value"] or "")
            tail = f": {rows}" + (f" and {more} more" if more > 0 else "") if shown else ""
            lines.append(f"{name}: {_failure_label(f)} failed ({detail}){tail}")
    return f"validation failed (report: {report_path}):\n  " + "\n  ".join(lines)


def _markdown(report: dict[str, Any]) -> str:
    out = ["# Data validation", "", f"Overall: **{'PASS' if report['success'] else 'FAIL'}**", ""]
    out += ["| dataset | result | rows | expectations | failed |", "|---|---|---|---|---|"]
    for name, res in report["datasets"].items():
        c = res["counts"]
        verdict = "pass" if res["success"] else "FAIL"
        out.append(f"| {name} | {verdict} | {res['rows']} | {c.get('expectations', '-')} | {c.get('failed', '-')} |")
    for name, res in report["datasets"].items():
        if res["success"]:
            continue
        out += ["", f"## {name}", ""]
        if res.get("error"):
            out.append(f"- unreadable: {res['error']}")
        for f in res["failures"]:
            rows = ", ".join(_row_label(r) for r in f["rows"][:5])
            what = f"{f['unexpected_count']} row(s): {rows}" if f["rows"] else (f["error"] or f["observed_value"])
            out.append(f"- `{_failure_label(f)}`: {what}")
    return "\n".join(out) + "\n"
