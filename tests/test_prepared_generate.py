"""generate from prepared tasks (`editthinker prepare` output): real images with no privileged reference go to
an API expert and judge (the OpenAI-compatible stub) and the stand-in editor; synthetic prepared tasks keep the
world's target. Images are stored once, in the trajectories' image store, and every later stage reads them."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from editthinker import prepare
from editthinker.config import parse_params
from editthinker.images import ImageStore, open_store_for
from editthinker.records import read_manifest, read_table
from editthinker.stages import filter as filter_stage
from editthinker.stages import generate, split, validate
from openai_stub import StubOpenAIServer
from test_api_faults import answers


def _photo(seed: int, size: int = 64) -> bytes:
    """A smooth photo-like 64 px image: gradients and a seeded blob."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    c = rng.uniform(0, 1, (3, 3))
    img = np.stack([c[k, 0] * x + c[k, 1] * y + c[k, 2] * x * y for k in range(3)], -1)
    cx, cy = rng.uniform(0.2, 0.8, 2)
    img += 0.5 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) * 30)[..., None]
    buf = io.BytesIO()
    Image.fromarray((np.clip(img / img.max(), 0, 1) * 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _source(root: Path, n: int = 6) -> Path:
    """A jsonl + image-folder source of n rows."""
    (root / "images").mkdir(parents=True)
    lines = []
    for i in range(n):
        (root / "images" / f"p{i}.png").write_bytes(_photo(i))
        lines.append(json.dumps({"image": f"images/p{i}.png", "instruction": f"make photo {i} warmer"}))
    (root / "rows.jsonl").write_text("\n".join(lines) + "\n")
    return root / "rows.jsonl"


def _params(rows: Path, api_url: str, **over: Any):  # type: ignore[no-untyped-def]
    api = {"kind": "openai", "base_url": api_url, "model": "stub", "timeout_s": 10.0, "max_retries": 0,
           "concurrency": 4, "cache_dir": ""}  # fmt: skip
    raw = {
        "sources": [{"name": "mine", "kind": "jsonl", "path": str(rows)}],
        "editors": [{"name": "shift", "kind": "stand-in"}],
        "expert": api,
        "judge": {**api, "format_retries": 0},
        "generate": {"num_tasks": 4, "max_turns": 3, "shards": 2, "unit_tasks": 2},
        **over,
    }
    return parse_params(raw)


@pytest.fixture(scope="module")
def run(tmp_path_factory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("prepared")
    rows = _source(root / "src")
    with StubOpenAIServer(respond=answers) as srv:
        params = _params(rows, srv.base_url)
        prepare.run(params, root / "prepared")
        first = generate.run(params, root / "traj", tasks=root / "prepared")
        again = generate.run(params, root / "again", tasks=root / "prepared")
        asked = len(srv.requests)
    return {"root": root, "params": params, "first": first, "again": again, "asked": asked}


def test_real_tasks_have_no_reference_and_their_images_are_stored_once(run) -> None:  # type: ignore[no-untyped-def]
    root = run["root"]
    turns = read_table(root / "traj").to_pylist()
    assert run["asked"] > 0 and {r["source"] for r in turns} == {"mine"}
    assert all(r["reference"] is None for r in turns)  # real data: nothing privileged for the expert or judge
    tasks = read_table(root / "prepared" / "tasks").to_pylist()
    assert len({r["task_id"] for r in turns}) == 4 < len(tasks)  # generate.num_tasks of the 6 prepared
    store = open_store_for(root / "traj", root / "traj" / "images")
    used = {r["source_image"] for r in turns} | {r["image"] for r in turns}
    assert sorted(used) == [r["sha256"] for r in store.iter_images()]  # only the images used, each once
    prepared = ImageStore(root / "prepared" / "images")
    sources = {r["source_image"] for r in turns}
    assert sources == {t["image_sha256"] for t in tasks[:4]}  # the first 4 prepared tasks' images, copied
    assert all(store.bytes_of(h) == prepared.bytes_of(h) for h in sources)
    assert len(prepared) == 6 and len(store) == len(used)
    edits = {r["image"] for r in turns} - sources
    assert edits and all(store.image(h).size == (64, 64) for h in edits)  # the stand-in editor's outputs
    # same params and tasks: the same bytes
    assert run["again"]["dataset_sha256"] == run["first"]["dataset_sha256"]
    assert run["again"]["images"] == run["first"]["images"]
    assert (
        read_manifest(root / "traj")["lineage"]["inputs"]["tasks"]
        == read_manifest(root / "prepared" / "tasks")["dataset_sha256"]
    )


def test_the_later_stages_work_on_real_data(run) -> None:  # type: ignore[no-untyped-def]
    root, params = run["root"], run["params"]
    filter_stage.run(params, root / "traj", root / "filt")
    split.run(params, root / "filt", root / "sft", root / "rl")
    store_sha = run["first"]["images"]["dataset_sha256"]
    for name in ("filt", "sft", "rl"):
        assert read_manifest(root / name)["images"]["dataset_sha256"] == store_sha
    report = validate.run(params, root / "traj", root / "sft", root / "rl", root / "report", root / "traj" / "images")
    assert report["success"], report["datasets"]
    assert report["datasets"]["trajectories"]["rows"] == len(read_table(root / "traj"))


def test_synthetic_roles_with_reference_less_tasks_fail_at_start_up(run, tmp_path) -> None:  # type: ignore[no-untyped-def]
    root = run["root"]
    params = run["params"].model_copy(update={"expert": parse_params({}).expert})
    with pytest.raises(ValueError, match="no privileged reference .* expert.kind is synthetic"):
        generate.run(params, tmp_path / "traj", tasks=root / "prepared")
    assert not (tmp_path / "traj").exists() and not generate.units_root(tmp_path / "traj").exists()


def test_prepared_synthetic_tasks_keep_the_world_target(tmp_path) -> None:
    params = parse_params({"sources": [{"name": "world", "kind": "synthetic", "num_tasks": 6}],
                           "generate": {"num_tasks": 6, "max_turns": 3, "shards": 1, "unit_tasks": 4}})  # fmt: skip
    prepare.run(params, tmp_path / "prepared")
    generate.run(params, tmp_path / "traj", tasks=tmp_path / "prepared")  # synthetic expert and judge: allowed
    turns = read_table(tmp_path / "traj").to_pylist()
    tasks = {t["task_id"]: t for t in read_table(tmp_path / "prepared" / "tasks").to_pylist()}
    assert len({r["task_id"] for r in turns}) == 6
    for r in turns:
        assert r["reference"] == tasks[r["task_id"]]["reference"] and r["reference"].startswith("{")
        assert json.loads(r["metadata"])["op"] == r["task_type"]
    assert {r["semantic"] for r in turns} != {None}  # the exact judge scored against the target


@pytest.mark.slow
def test_sft_trains_on_real_data_steps(run, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from editthinker.stages import sft

    root = run["root"]
    if not (root / "sft").exists():
        filter_stage.run(run["params"], root / "traj", root / "filt")
        split.run(run["params"], root / "filt", root / "sft", root / "rl")
    rows = read_manifest(root / "sft")["rows"] + read_manifest(root / "rl")["rows"]
    data = root / ("sft" if read_manifest(root / "sft")["rows"] else "rl")
    assert rows > 0
    params = run["params"].model_copy(
        update={"sft": run["params"].sft.model_copy(update={"max_steps": 2, "batch_size": 2}),
                "thinker": run["params"].thinker.model_copy(update={"hidden_size": 64, "num_heads": 4})}
    )  # fmt: skip
    m = sft.run(params, data, tmp_path / "sft", root / "traj" / "images")
    assert m["steps"] == 2
