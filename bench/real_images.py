"""Generation at real image size: peak RSS flat in the number of tasks, bytes on disk, images stored once.

A prepared source of generated photo-like JPEGs (seeded smooth gradients, a blob and noise; `--side` px square,
1024 by default: the method's size), one image per task; `editthinker prepare` then `generate --tasks` with the
stand-in editor (a seeded colour transform: tests and benchmarks only) and an API expert and judge answered by
the local stub server (tests/openai_stub.py, in this process; each generate runs in its own process, so its peak
RSS is its own). Per size: wall time, peak RSS, bytes on disk per trajectory, and the image store's bytes against
the bytes of the unique images the rows refer to (equal: every image once, none unreferenced).

Sizes: `--tasks 1000,10000`. A calibration run of a few tasks gives the seconds per task; a size that would take
longer than `--max-s` is cut to what fits, and then the smaller sizes keep their ratio to it (the memory comparison
needs sizes 10x apart, not large ones); the printed note says so. `--quick`: a tiny smoke run.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

# the stub server in its own process: the expert rewrites once then is satisfied, the judge's scores are a hash of
# what it was shown (tests/test_api_faults.py). It keeps no request body (they hold whole images), only a count.
_STUB = """
import sys
from openai_stub import StubOpenAIServer
from test_api_faults import answers

class Count(list):
    n = 0
    def append(self, item):
        Count.n += 1

with StubOpenAIServer(respond=answers) as srv:
    srv.requests = Count()
    print(srv.base_url, flush=True)
    sys.stdin.read()  # until the bench closes it
print(Count.n, flush=True)
"""

_GENERATE = """
import json, resource, sys, time
from pathlib import Path
from editthinker.config import load_params
from editthinker.stages import generate
params = load_params(Path(sys.argv[1]))
t0 = time.perf_counter()
manifest = generate.run(params, Path(sys.argv[3]), tasks=Path(sys.argv[2]))
wall = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"wall_s": wall, "rows": manifest["rows"], "peak_rss_mib": peak}))
"""


def line(name: str, value: float, unit: str, note: str = "") -> None:
    print(f"{name:<44} {value:>12.2f} {unit:<14} {note}", flush=True)


def photo_jpeg(seed: int, side: int) -> bytes:
    """A photo-like JPEG: seeded smooth colour gradients, a soft blob and mild noise (quality 90)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    c = rng.uniform(0, 1, (3, 3)).astype(np.float32)
    img = np.stack([c[k, 0] * x + c[k, 1] * y + c[k, 2] * x * y for k in range(3)], -1)
    cx, cy = rng.uniform(0.2, 0.8, 2)
    img += 0.5 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) * 20)[..., None]
    img = img / img.max() * 235 + rng.normal(0, 4, img.shape).astype(np.float32)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_source(folder: Path, start: int, count: int, side: int) -> Path:
    """A jsonl + image-folder source of `count` tasks (photos start..start+count-1), one image each."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(start, start + count):
        (folder / "images" / f"p{i:06d}.jpg").write_bytes(photo_jpeg(i, side))
        rows.append(json.dumps({"image": f"images/p{i:06d}.jpg", "instruction": f"make photo {i} warmer"}))
    (folder / "rows.jsonl").write_text("\n".join(rows) + "\n")
    return folder / "rows.jsonl"


def bench_params(rows: Path, base_url: str, tasks: int, side: int) -> dict[str, Any]:
    api = {"kind": "openai", "base_url": base_url, "model": "stub", "timeout_s": 60.0, "max_retries": 2,
           "concurrency": 16, "cache_dir": ""}  # fmt: skip
    return {
        "sources": [{"name": "photos", "kind": "jsonl", "path": str(rows)}],
        "prepare": {"max_pixels": side * side},
        "editors": [{"name": "shift", "kind": "stand-in"}],
        "expert": api,
        "judge": {**api, "format_retries": 0},
        "generate": {"num_tasks": tasks, "max_turns": 3, "shards": 1, "unit_tasks": 64},
    }


def dir_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def store_check(traj: Path) -> tuple[int, int, int, int]:
    """(stored images, their bytes, unique images the rows refer to, those images' bytes)."""
    from editthinker.images import ImageStore
    from editthinker.records import iter_rows

    store = ImageStore(traj / "images")
    stored = stored_bytes = 0
    for row in store.iter_images():
        stored += 1
        stored_bytes += len(row["bytes"])
    referred: set[str] = set()
    for row in iter_rows(traj, columns=["source_image", "image"]):
        referred.update(h for h in row.values() if h)
    unique_bytes = sum(len(store.bytes_of(h)) for h in sorted(referred))  # KeyError: a row refers to a missing one
    return stored, stored_bytes, len(referred), unique_bytes


def one_size(work: Path, label: str, tasks: int, side: int, base_url: str) -> dict[str, Any]:
    """Source, prepare (in this process) and generate (its own process) for `tasks` tasks."""
    from editthinker import prepare
    from editthinker.config import parse_params

    folder = work / label
    t0 = time.perf_counter()
    rows = write_source(folder / "source", 0, tasks, side)
    raw = bench_params(rows, base_url, tasks, side)
    prepared = prepare.run(parse_params(raw), folder / "prepared")
    setup_s = time.perf_counter() - t0
    (folder / "params.yaml").write_text(yaml.safe_dump(raw))
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-c", _GENERATE, str(folder / "params.yaml"), str(folder / "prepared"), str(folder / "traj")]
    out = json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
    stored, stored_bytes, unique, unique_bytes = store_check(folder / "traj")
    return {**out, "tasks": tasks, "setup_s": setup_s, "prepared_tasks": prepared.get("rows"),
            "disk_bytes": dir_bytes(folder / "traj"), "stored": stored, "stored_bytes": stored_bytes,
            "unique": unique, "unique_bytes": unique_bytes}  # fmt: skip


def fit(sizes: list[int], per_task_s: float, max_s: float) -> tuple[list[int], str]:
    """The sizes to run: each within max_s at per_task_s; when the largest is cut, the others keep their ratio."""
    fits = max(1, int(max_s / per_task_s))
    if sizes[-1] <= fits:
        return sizes, ""
    scale = fits / sizes[-1]
    cut = [max(1, int(n * scale)) for n in sizes]
    note = (f"cut from {sizes} to {cut}: {sizes[-1]} tasks would take about {sizes[-1] * per_task_s / 60:.0f} min "
            f"here ({per_task_s:.2f} s/task measured), over --max-s {max_s:.0f} s")  # fmt: skip
    return cut, note


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tasks", default="1000,10000", help="comma-separated task counts, ascending")
    ap.add_argument("--side", type=int, default=1024, help="image side in pixels")
    ap.add_argument("--max-s", type=float, default=600.0, help="longest time one size may take (source+generate)")
    ap.add_argument("--quick", action="store_true", help="a tiny smoke run: its figures mean nothing")
    args = ap.parse_args()
    sizes = [6, 12] if args.quick else sorted(int(n) for n in args.tasks.split(","))
    side = 128 if args.quick else args.side
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{ROOT / 'src'}"}
    stub = subprocess.Popen([sys.executable, "-c", _STUB], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    assert stub.stdin is not None and stub.stdout is not None
    base_url = stub.stdout.readline().strip()
    try:
        with tempfile.TemporaryDirectory(prefix="editthinker-images-bench-") as tmp:
            work = Path(tmp)
            note = ""
            if not args.quick:
                calib = one_size(work, "calibration", 16, side, base_url)
                per_task = (calib["setup_s"] + calib["wall_s"]) / calib["tasks"]
                sizes, note = fit(sizes, per_task, args.max_s)
                print(f"calibration: {per_task:.3f} s per task (16 tasks: source, prepare, generate)", flush=True)
            results = [one_size(work, f"n{n}", n, side, base_url) for n in sizes]
    finally:
        stub.stdin.close()
        calls = stub.stdout.read().strip()
        stub.wait(timeout=30)
    for r in results:
        n = r["tasks"]
        line(f"images {side}px, {n} tasks: generate wall", r["wall_s"], "s",
             f"({n / r['wall_s']:.1f} traj/s; {r['rows']} turns; source+prepare {r['setup_s']:.0f} s)")  # fmt: skip
        line(f"images {side}px, {n} tasks: generate peak RSS", r["peak_rss_mib"], "MiB")
        line(f"images {side}px, {n} tasks: bytes on disk / trajectory", r["disk_bytes"] / n, "B",
             f"({r['disk_bytes'] / 2**20:.0f} MiB in all, the image store included)")  # fmt: skip
        same = "equal" if (r["stored"], r["stored_bytes"]) == (r["unique"], r["unique_bytes"]) else "NOT EQUAL"
        line(f"images {side}px, {n} tasks: stored image bytes", r["stored_bytes"], "B",
             f"({r['stored']} images) vs {r['unique_bytes']} B of the {r['unique']} unique images: {same}")  # fmt: skip
    small, big = results[0], results[-1]
    ratio = big["peak_rss_mib"] / small["peak_rss_mib"]
    line(f"peak RSS {big['tasks']} / {small['tasks']} tasks", ratio, "x",
         f"(target within 15%: {abs(ratio - 1) <= 0.15}; {calls} stub API calls in all)")  # fmt: skip
    if note:
        print(f"note: {note}", flush=True)


if __name__ == "__main__":
    main()
