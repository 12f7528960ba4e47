"""User-declared sources and the preparation step: every kind of source, bad rows quarantined with reasons,
duplicates dropped, content-derived task ids, order independence, seeded mixing, the image store."""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from editthinker.config import ConfigError, Params, parse_params
from editthinker.images import ImageStore
from editthinker.prepare import PreparedDataset, run, target_size
from editthinker.sources import SourceError, open_source
from editthinker.storage import IntegrityError
from s3_server import isolated_bucket, loopback_s3


def _png(seed: int, size: tuple[int, int] = (64, 48), mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.convert(mode).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(img: Image.Image, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **kw)
    return buf.getvalue()


def _cases() -> list[dict[str, Any]]:
    """(file name, bytes or None for a missing file, instruction, why it is bad or None, expected size)."""
    rgb = Image.fromarray(np.random.default_rng(9).integers(0, 256, (32, 64, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    sixteen = io.BytesIO()
    Image.fromarray(np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 21).save(sixteen, "PNG")
    good_jpeg = _jpeg(rgb)
    return [
        {"id": "g1", "file": "g1.png", "data": _png(1), "text": "make the sky red", "bad": None, "size": (64, 48)},
        {"id": "g2", "file": "g2.png", "data": _png(2), "text": "add a cat", "bad": None, "size": (64, 48)},
        {"id": "g3", "file": "g3.png", "data": _png(3), "text": "remove the car", "bad": None, "size": (64, 48)},
        {
            "id": "cmyk",
            "file": "cmyk.jpg",
            "data": _jpeg(rgb.convert("CMYK")),
            "text": "blur the background",
            "bad": None,
            "size": (64, 32),
        },
        {
            "id": "sixteen",
            "file": "sixteen.png",
            "data": sixteen.getvalue(),
            "text": "brighten it",
            "bad": None,
            "size": (64, 48),
        },
        {
            "id": "rotated",
            "file": "rotated.jpg",
            "data": _jpeg(rgb, exif=exif),
            "text": "turn it to night",
            "bad": None,
            "size": (32, 64),
        },
        {
            "id": "corrupt",
            "file": "corrupt.jpg",
            "data": good_jpeg[:20] + b"\x00" * 40,
            "text": "fix it",
            "bad": "undecodable",
            "size": None,
        },
        {
            "id": "missing",
            "file": "missing.png",
            "data": None,
            "text": "paint it",
            "bad": "missing image file",
            "size": None,
        },
        {
            "id": "empty-file",
            "file": "empty.png",
            "data": b"",
            "text": "paint it",
            "bad": "empty image file",
            "size": None,
        },
        {"id": "no-text", "file": "g4.png", "data": _png(4), "text": "   ", "bad": "empty instruction", "size": None},
        {
            "id": "tiny",
            "file": "tiny.png",
            "data": _png(5, (1, 1)),
            "text": "grow it",
            "bad": "too small",
            "size": None,
        },
        # same bytes as g1 and the same instruction once normalised: a duplicate, dropped and counted (of two
        # duplicates the one with the smaller id stays, whatever their order)
        {
            "id": "g1-again",
            "file": "g1-copy.png",
            "data": _png(1),
            "text": "  Make the  sky RED ",
            "bad": None,
            "size": (64, 48),
            "duplicate": True,
        },
    ]


GOOD = {c["id"] for c in _cases() if c["bad"] is None and not c.get("duplicate")}
BAD = {c["id"]: c["bad"] for c in _cases() if c["bad"] is not None}


def _write_images(folder: Path) -> list[dict[str, Any]]:
    folder.mkdir(parents=True, exist_ok=True)
    cases = _cases()
    for c in cases:
        if c["data"] is not None:
            (folder / c["file"]).write_bytes(c["data"])
    return cases


def _records(cases: list[dict[str, Any]], order_seed: int | None = None) -> list[dict[str, Any]]:
    recs = [{"id": c["id"], "image": c["file"], "prompt": c["text"], "kind": "edit"} for c in cases]
    if order_seed is not None:
        random.Random(order_seed).shuffle(recs)
    return recs


def _jsonl(path: Path, recs: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))


COLUMNS = {"image": "image", "instruction": "prompt", "id": "id", "task_type": "kind"}


def _params(sources: list[dict[str, Any]], **prepare: Any) -> Params:
    return parse_params({"sources": sources, "prepare": {"rows_per_shard": 4, "images_per_shard": 3, **prepare}})


def _check_outcome(ds: PreparedDataset, source: str) -> None:
    tasks = list(ds.tasks())
    assert {t["source_id"] for t in tasks} == GOOD
    quarantined = {q["ref"]: q["reason"] for q in ds.quarantine() if q["source"] == source}
    assert set(quarantined) == set(BAD)
    for ref, why in BAD.items():
        assert why in quarantined[ref], (ref, quarantined[ref])
    assert ds.summary["sources"][source]["duplicates"] == 1
    sizes = {c["id"]: c["size"] for c in _cases()}
    for t in tasks:
        assert (t["width"], t["height"]) == sizes[t["source_id"]]
        img = ds.images.image(t["image_sha256"])
        assert img.mode == "RGB" and img.size == (t["width"], t["height"])


def test_jsonl_with_an_image_folder_quarantines_bad_rows_and_loses_nothing_else(tmp_path: Path) -> None:
    cases = _write_images(tmp_path / "src" / "images")
    _jsonl(tmp_path / "src" / "rows.jsonl", [{**r, "image": f"images/{r['image']}"} for r in _records(cases)])
    params = _params([{"name": "mine", "kind": "jsonl", "path": str(tmp_path / "src" / "rows.jsonl"),
                       "columns": COLUMNS}])  # fmt: skip
    summary = run(params, tmp_path / "out")
    ds = PreparedDataset(tmp_path / "out")
    _check_outcome(ds, "mine")
    assert summary["tasks"] == len(GOOD) and summary["quarantined"] == len(BAD)
    rotated = next(t for t in ds.tasks() if t["source_id"] == "rotated")
    # the EXIF-rotated photo is upright: its left column was the source's bottom row
    src = np.asarray(Image.open(io.BytesIO(next(c for c in cases if c["id"] == "rotated")["data"])).convert("RGB"))
    got = np.asarray(ds.images.image(rotated["image_sha256"]))
    assert np.abs(got[:, 0].astype(int) - src[-1, :].astype(int)).mean() < 20
    assert np.abs(got[:, 0].astype(int) - src[0, :].astype(int)).mean() > 40


def test_the_dataset_does_not_depend_on_the_order_of_the_rows(tmp_path: Path) -> None:
    cases = _write_images(tmp_path / "images")
    hashes, ids = set(), []
    for k, seed in enumerate((None, 1, 2)):
        _jsonl(tmp_path / f"rows{k}.jsonl", _records(cases, seed))
        params = _params([{"name": "mine", "kind": "jsonl", "path": str(tmp_path / f"rows{k}.jsonl"),
                           "image_root": str(tmp_path / "images"), "columns": COLUMNS}])  # fmt: skip
        hashes.add(run(params, tmp_path / f"out{k}")["dataset_sha256"])
        ids.append([t["task_id"] for t in PreparedDataset(tmp_path / f"out{k}").tasks()])
    assert len(hashes) == 1 and ids[0] == ids[1] == ids[2] and len(ids[0]) == len(GOOD)


def test_parquet_with_bytes_gives_the_same_task_ids_as_jsonl(tmp_path: Path) -> None:
    cases = _write_images(tmp_path / "images")
    _jsonl(tmp_path / "rows.jsonl", _records(cases))
    table = pa.Table.from_pylist([{"id": c["id"], "image": c["data"], "prompt": c["text"], "kind": "edit"}
                                  for c in cases])  # fmt: skip
    pq.write_table(table, tmp_path / "rows.parquet")
    jl = run(_params([{"name": "a", "kind": "jsonl", "path": str(tmp_path / "rows.jsonl"),
                       "image_root": str(tmp_path / "images"), "columns": COLUMNS}]), tmp_path / "jl")  # fmt: skip
    pa_ = run(_params([{"name": "a", "kind": "parquet", "path": str(tmp_path / "rows.parquet"),
                        "columns": COLUMNS}]), tmp_path / "pq")  # fmt: skip
    ds = PreparedDataset(tmp_path / "pq")
    assert [t["task_id"] for t in ds.tasks()] == [t["task_id"] for t in PreparedDataset(tmp_path / "jl").tasks()]
    assert jl["parts_sha256"]["images"] == pa_["parts_sha256"]["images"]
    # no missing file in a bytes source: that row has no image bytes at all
    reasons = {q["ref"]: q["reason"] for q in ds.quarantine()}
    assert reasons["missing"] == "no image" and "undecodable" in reasons["corrupt"]


def test_hf_save_to_disk_and_its_arrow_files(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    cases = _write_images(tmp_path / "images")
    rows = {
        "id": [c["id"] for c in cases],
        "prompt": [c["text"] for c in cases],
        "kind": ["edit"] * len(cases),
        "image": [None if c["data"] is None else {"bytes": c["data"], "path": None} for c in cases],
    }
    feats = datasets.Features({"id": datasets.Value("string"), "prompt": datasets.Value("string"),
                               "kind": datasets.Value("string"), "image": datasets.Image()})  # fmt: skip
    datasets.Dataset.from_dict(rows, features=feats).save_to_disk(str(tmp_path / "hf"))
    hf = run(_params([{"name": "h", "kind": "hf", "path": str(tmp_path / "hf"), "columns": COLUMNS}]), tmp_path / "o1")
    ds = PreparedDataset(tmp_path / "o1")
    assert {t["source_id"] for t in ds.tasks()} == GOOD
    assert {q["ref"] for q in ds.quarantine()} == set(BAD)
    arrow = run(_params([{"name": "h", "kind": "arrow", "path": str(tmp_path / "hf"), "columns": COLUMNS}]),
                tmp_path / "o2")  # fmt: skip
    assert arrow["dataset_sha256"] == hf["dataset_sha256"]
    # what prepare writes reads back with datasets too
    back = datasets.load_dataset("parquet", data_files=str(tmp_path / "o1" / "tasks" / "*.parquet"), split="train")
    assert sorted(back["task_id"]) == sorted(t["task_id"] for t in ds.tasks())


def test_csv_with_s3_image_paths_on_a_loopback_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3

    cases = _cases()
    with loopback_s3() as endpoint:
        bucket = isolated_bucket(endpoint, monkeypatch, tmp_path, "k", "s", "sources")
        client = boto3.session.Session().client("s3", endpoint_url=endpoint, region_name="us-east-1")
        for c in cases:
            if c["data"] is not None:
                client.put_object(Bucket=bucket, Key=f"imgs/{c['file']}", Body=c["data"])
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=["id", "image", "prompt", "kind"])
        w.writeheader()
        for r in _records(cases):
            w.writerow({**r, "image": f"s3://{bucket}/imgs/{r['image']}"})
        client.put_object(Bucket=bucket, Key="rows.csv", Body=buf.getvalue().encode())
        params = parse_params({"s3": {"endpoint_url": endpoint},
                               "sources": [{"name": "s3csv", "kind": "csv", "path": f"s3://{bucket}/rows.csv",
                                            "columns": COLUMNS}]})  # fmt: skip
        run(params, tmp_path / "out")
    ds = PreparedDataset(tmp_path / "out")
    _check_outcome(ds, "s3csv")
    missing = next(q for q in ds.quarantine() if q["ref"] == "missing")
    assert missing["reason"] == f"missing image file s3://{bucket}/imgs/missing.png"


def test_imagefolder_with_metadata(tmp_path: Path) -> None:
    cases = _write_images(tmp_path / "folder")
    _jsonl(tmp_path / "folder" / "metadata.jsonl", _records(cases))
    run(_params([{"name": "f", "kind": "imagefolder", "path": str(tmp_path / "folder"), "columns": COLUMNS}]),
        tmp_path / "out")  # fmt: skip
    _check_outcome(PreparedDataset(tmp_path / "out"), "f")


def test_synthetic_source_is_the_world() -> None:
    params = parse_params({"sources": [{"name": "world", "kind": "synthetic", "num_tasks": 5}]})
    rows = list(open_source(params.sources[0], params.world))
    from editthinker.world.tasks import make_task

    first = make_task(1234, 0, params.world.min_shapes, params.world.max_shapes, params.world.styles)
    assert len(rows) == 5 and rows[0].instruction == first.instruction and rows[0].source_id == first.task_id
    assert Image.open(io.BytesIO(rows[0].image or b"")).size == (params.world.image_size,) * 2


def test_large_images_shrink_to_max_pixels_in_editor_multiples(tmp_path: Path) -> None:
    (tmp_path / "big.png").write_bytes(_png(7, (300, 200)))
    _jsonl(tmp_path / "rows.jsonl", [{"image": "big.png", "instruction": "x"}])
    run(_params([{"name": "b", "kind": "jsonl", "path": str(tmp_path / "rows.jsonl")}], max_pixels=64 * 64),
        tmp_path / "out")  # fmt: skip
    (t,) = PreparedDataset(tmp_path / "out").tasks()
    assert t["width"] * t["height"] <= 64 * 64 and t["width"] % 16 == 0 and t["height"] % 16 == 0
    assert abs(t["width"] / t["height"] - 1.5) < 0.25
    for w, h in [(1920, 1080), (4000, 3000), (1024, 1024), (513, 2000)]:
        tw, th = target_size(w, h, 1024 * 1024, 16)
        assert tw * th <= 1024 * 1024 and tw % 16 == th % 16 == 0 and abs(tw / th - w / h) < 0.05


def test_limits_and_mixing_are_seeded(tmp_path: Path) -> None:
    for name, n in (("a", 20), ("b", 20)):
        folder = tmp_path / name
        folder.mkdir()
        for i in range(n):
            (folder / f"{i}.png").write_bytes(_png(1000 * ord(name) + i, (16, 16)))
        _jsonl(folder / "rows.jsonl", [{"image": f"{i}.png", "instruction": f"edit {i}"} for i in range(n)])

    def mix(seed: int, out: str) -> list[dict[str, Any]]:
        params = _params([{"name": "a", "kind": "jsonl", "path": str(tmp_path / "a" / "rows.jsonl"), "weight": 3.0},
                          {"name": "b", "kind": "jsonl", "path": str(tmp_path / "b" / "rows.jsonl"), "limit": 5}],
                         num_tasks=12, seed=seed)  # fmt: skip
        run(params, tmp_path / out)
        return list(PreparedDataset(tmp_path / out).tasks())

    one, again, other = mix(0, "o1"), mix(0, "o2"), mix(1, "o3")
    assert one == again
    assert [t["source"] for t in one].count("a") == 9 and [t["source"] for t in one].count("b") == 3
    assert {t["task_id"] for t in one} != {t["task_id"] for t in other}
    assert len({t["image_sha256"] for t in one}) == len(one)


def test_image_store_reads_by_hash_and_verifies(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    for i in range(7):
        (tmp_path / "src" / f"{i}.png").write_bytes(_png(i, (16, 16)))
    _jsonl(tmp_path / "src" / "rows.jsonl", [{"image": f"{i}.png", "instruction": f"e {i}"} for i in range(7)])
    run(_params([{"name": "s", "kind": "jsonl", "path": str(tmp_path / "src" / "rows.jsonl")}]), tmp_path / "out")
    store = ImageStore(tmp_path / "out" / "images")
    tasks = list(PreparedDataset(tmp_path / "out").tasks())
    assert len(store) == 7 and len(store.files) == 3  # images_per_shard 3
    for t in tasks:
        assert t["image_sha256"] in store
        assert Image.open(io.BytesIO(store.bytes_of(t["image_sha256"]))).size == (16, 16)
    assert "0" * 64 not in store
    with pytest.raises(KeyError, match="not in the store"):
        store.bytes_of("0" * 64)
    shard = tmp_path / "out" / "images" / "part-00001.parquet"
    shard.write_bytes(shard.read_bytes()[:-9] + b"tampered!")
    with pytest.raises(IntegrityError):
        list(ImageStore(tmp_path / "out" / "images").iter_images())


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"sources\.0: .*needs a path"):
        parse_params({"sources": [{"name": "x", "kind": "jsonl"}]})
    with pytest.raises(ConfigError, match=r"sources: names must be unique"):
        parse_params({"sources": [{"name": "w", "kind": "synthetic"}, {"name": "w", "kind": "synthetic"}]})
    with pytest.raises(ConfigError, match=r"sources\.0\.columns\.imag: unknown key"):
        parse_params({"sources": [{"name": "x", "kind": "csv", "path": "a.csv", "columns": {"imag": "i"}}]})
    hub = parse_params({"sources": [{"name": "h", "kind": "hf", "path": "org/some-dataset"}]})
    with pytest.raises(SourceError, match=r"sources\.h\.revision"):
        list(open_source(hub.sources[0]))
    (tmp_path / "rows.csv").write_text("file,prompt\na.png,x\n")
    bad = parse_params({"sources": [{"name": "c", "kind": "csv", "path": str(tmp_path / "rows.csv")}]})
    with pytest.raises(SourceError, match=r"sources\.c\.columns\.image: .* no column 'image'"):
        list(open_source(bad.sources[0]))


def test_cli_prepare(tmp_path: Path) -> None:
    from editthinker.cli import app

    (tmp_path / "params.yaml").write_text("sources: [{name: world, kind: synthetic, num_tasks: 4}]\n")
    res = CliRunner().invoke(app, ["prepare", "--params", str(tmp_path / "params.yaml"), "--out",
                                   str(tmp_path / "out")])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert len(list(PreparedDataset(tmp_path / "out").tasks())) == 4
    (tmp_path / "bad.yaml").write_text(f"sources: [{{name: m, kind: jsonl, path: {tmp_path / 'nothing'}}}]\n")
    res = CliRunner().invoke(app, ["prepare", "--params", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "o2")])
    assert res.exit_code == 1 and "sources.m.path" in res.output
