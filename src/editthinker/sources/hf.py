"""`hf` sources: a `save_to_disk` folder (`datasets.load_from_disk`), or anything `datasets.load_dataset` reads:
a hub dataset id (which needs a pinned `revision`; it downloads, unless it is in the local cache or
HF_HUB_OFFLINE=1 forbids it) or a local folder of data files. Image columns are read undecoded (their bytes)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from editthinker.config import S3Config, SourceConfig
from editthinker.sources.rows import RawRow, SourceError, make_row
from editthinker.sources.uri import UriReader


def _load(cfg: SourceConfig) -> Any:
    import datasets

    local = Path(cfg.path)
    if local.is_dir() and ((local / "state.json").exists() or (local / "dataset_dict.json").exists()):
        ds = datasets.load_from_disk(str(local))
        if isinstance(ds, datasets.DatasetDict):
            if cfg.split not in ds:
                raise SourceError(f"sources.{cfg.name}.split: {cfg.split!r} is not one of {list(ds)}")
            ds = ds[cfg.split]
        return ds
    if not local.exists() and not cfg.revision:
        raise SourceError(f"sources.{cfg.name}.revision: a hub dataset ({cfg.path}) needs a pinned revision")
    try:
        return datasets.load_dataset(cfg.path, revision=cfg.revision, split=cfg.split)
    except (FileNotFoundError, ValueError, ConnectionError) as exc:
        raise SourceError(f"sources.{cfg.name}.path: cannot load {cfg.path}: {exc}") from None


def hf_rows(cfg: SourceConfig, s3: S3Config) -> Iterator[RawRow]:
    import datasets

    ds = _load(cfg)
    for col in ("image", "instruction"):
        if getattr(cfg.columns, col) not in ds.column_names:
            raise SourceError(f"sources.{cfg.name}.columns.{col}: no column {getattr(cfg.columns, col)!r} "
                              f"(it has {ds.column_names})")  # fmt: skip
    if isinstance(ds.features[cfg.columns.image], datasets.Image):
        ds = ds.cast_column(cfg.columns.image, datasets.Image(decode=False))
    reader = UriReader(s3)
    base = cfg.image_root or (cfg.path if Path(cfg.path).is_dir() else None)
    for row, rec in enumerate(ds):
        yield make_row(cfg.name, row, rec, cfg.columns, reader, base)
