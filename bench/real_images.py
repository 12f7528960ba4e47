"""Generation at real image size: peak RSS flat in the number of tasks, bytes on disk, images stored once.

A prepared source of generated photo-like JPEGs (seeded smooth gradients and a soft blob, plus `--grain` pixel
noise, none by default; `--side` px square, 1024 by default: the method's size), one image per task;
`editthinker prepare` then `generate --tasks` (each generate in its own process, so its peak RSS is its own)
with the stand-in roles of `editthinker.backends.stand_in`, in process (tests and benchmarks only): the editor a
seeded colour transform, the expert asks for one rewrite then is satisfied (two edits per trajectory), the judge
scores by a hash. So the time goes to what generate itself does with 1024 px images (PNG encoding by the
editor, hashing, staging, the parquet image store); HTTP to an API is measured by bench.py's API figures. Per
size: wall time, peak RSS, bytes on disk per trajectory, and the image store's bytes against the bytes of the
unique images the rows refer to (equal: every image once, none unreferenced).

The images are cheaper than photos by default: without grain a 1024 px PNG is about 0.15-0.4 MB and encodes in a
few tens of ms; `--grain 4` (photo-like noise: about 1-2 MB a PNG, 3x slower) gives photo-sized bytes on disk.

Memory: generate holds the images of the units in flight (`generate.units_in_flight`, 2 by default), then
assembles the dataset streamed; its peak RSS is set by that assembly (the image store is written a shard of up to
64 MB at a time) and, for the same run, varies by about +-25 MiB from one run to the next (measured: 391 and 428 MiB
for the same 237 tasks), so a ratio near 1.15 can be that noise.

Sizes: `--tasks 1000,10000`. A calibration run of a few tasks gives the seconds per task (source, prepare and
generate); when all sizes together would take longer than `--max-s`, they are cut to what fits, keeping their
ratios (the memory comparison needs sizes far apart and each several units of `generate.unit_tasks`, not large
ones); the printed note says so. `--quick`: a tiny smoke run.
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

# generate in its own process; a thread samples the RSS, so the peak while the units run (the images of the units in
# flight in memory) and the peak while the dataset and its image store are assembled from them are told apart
_GENERATE = """
import json, resource, sys, threading, time
from pathlib import Path
from editthinker.config import load_params
from editthinker.stages import generate

peaks = {"units": 0}
phase = "units"

def sample():
    while True:
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * resource.getpagesize() / 2**20
        peaks[phase] = max(peaks.get(phase, 0), rss)
        time.sleep(0.02)

write = generate._write
def marked(*args, **kwargs):
    global phase
    phase = "assembly"
    return write(*args, **kwargs)
generate._write = marked
threading.Thread(target=sample, daemon=True).start()
params = load_params(Path(sys.argv[1]))
t0 = time.perf_counter()
manifest = generate.run(params, Path(sys.argv[3]), tasks=Path(sys.argv[2]))
wall = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"wall_s": wall, "rows": manifest["rows"], "peak_rss_mib": peak, "phase_peaks_mib": peaks}))
"""


def line(name: str, value: float, unit: str, note: str = "") -> None:
    print(f"{name:<44} {value:>12.2f} {unit:<14} {note}", flush=True)


def photo_jpeg(seed: int, side: int, grain: float = 0.0) -> bytes:
    """A photo-like JPEG: seeded smooth colour gradients, a soft blob and `grain` (the sigma of seeded pixel
    noise, 0: none) (quality 90)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    c = rng.uniform(0, 1, (3, 3)).astype(np.float32)
    img = np.stack([c[k, 0] * x + c[k, 1] * y + c[k, 2] * x * y for k in range(3)], -1)
    cx, cy = rng.uniform(0.2, 0.8, 2)
    img += 0.5 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) * 20)[..., None]
    img = img / img.max() * 235
    if grain:
        img += rng.normal(0, grain, img.shape).astype(np.float32)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_source(folder: Path, start: int, count: int, side: int, grain: float) -> Path:
    """A jsonl + image-folder source of `count` tasks (photos start..start+count-1), one image each."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(start, start + count):
        (folder / "images" / f"p{i:06d}.jpg").write_bytes(photo_jpeg(i, side, grain))
        rows.append(json.dumps({"image": f"images/p{i:06d}.jpg", "instruction": f"make photo {i} warmer"}))
    (folder / "rows.jsonl").write_text("\n".join(rows) + "\n")
    return folder / "rows.jsonl"


def bench_params(rows: Path, tasks: int, side: int, unit_tasks: int) -> dict[str, Any]:
    return {
        "sources": [{"name": "photos", "kind": "jsonl", "path": str(rows)}],
        "prepare": {"max_pixels": side * side},
        "editors": [{"name": "shift", "kind": "stand-in"}],
        "expert": {"kind": "stand-in"},
        "judge": {"kind": "stand-in"},
        "generate": {"num_tasks": tasks, "max_turns": 3, "shards": 1, "unit_tasks": unit_tasks},
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


def setup(folder: Path, tasks: int, side: int, grain: float) -> tuple[Path, Path, float]:
    """A source of `tasks` photos and its prepared folder (`editthinker prepare`, in this process): (the prepared
    folder, the source's rows file, seconds taken). Every size's generate draws its tasks from the front of one
    prepared folder."""
    from editthinker import prepare
    from editthinker.config import parse_params

    t0 = time.perf_counter()
    rows = write_source(folder / "source", 0, tasks, side, grain)
    summary = prepare.run(parse_params(bench_params(rows, tasks, side, 64)), folder / "prepared")
    if summary["tasks"] != tasks:
        raise RuntimeError(f"prepare kept {summary['tasks']} of {tasks} tasks: {summary['quarantine_reasons']}")
    return folder / "prepared", rows, time.perf_counter() - t0


def one_size(folder: Path, prepared: Path, rows: Path, tasks: int, side: int, unit_tasks: int) -> dict[str, Any]:
    """generate (its own process) of the first `tasks` prepared tasks, measured; the output is removed after."""
    import shutil

    folder.mkdir(parents=True)
    raw = bench_params(rows, tasks, side, unit_tasks)
    (folder / "params.yaml").write_text(yaml.safe_dump(raw))
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-c", _GENERATE, str(folder / "params.yaml"), str(prepared), str(folder / "traj")]
    out = json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
    stored, stored_bytes, unique, unique_bytes = store_check(folder / "traj")
    result = {**out, "tasks": tasks, "disk_bytes": dir_bytes(folder / "traj"), "stored": stored,
              "stored_bytes": stored_bytes, "unique": unique, "unique_bytes": unique_bytes,
              "unit_tasks": unit_tasks}  # fmt: skip
    shutil.rmtree(folder)
    return result


def fit(sizes: list[int], setup_s: float, generate_s: float, max_s: float) -> tuple[list[int], str]:
    """The sizes to run within max_s, at `setup_s` per task of the largest (source and prepare, once) and
    `generate_s` per task of every size; when cut, they keep their ratios."""
    total = setup_s * sizes[-1] + generate_s * sum(sizes)
    if total <= max_s:
        return sizes, ""
    scale = max_s / total
    cut = [max(1, int(n * scale)) for n in sizes]
    note = (f"cut from {sizes} to {cut}: {sizes} tasks would take about {total / 60:.0f} min here (per task: "
            f"{setup_s:.3f} s source and prepare, {generate_s:.3f} s generate) over --max-s {max_s:.0f} s")  # fmt: skip
    return cut, note


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="1000,10000", help="comma-separated task counts, ascending")
    ap.add_argument("--side", type=int, default=1024, help="image side in pixels")
    ap.add_argument("--grain", type=float, default=0.0, help="sigma of the photos' pixel noise (4: photo-like)")
    ap.add_argument("--unit-tasks", type=int, default=64, help="generate.unit_tasks")
    ap.add_argument("--max-s", type=float, default=600.0, help="longest time all sizes together may take")
    ap.add_argument("--quick", action="store_true", help="a tiny smoke run: its figures mean nothing")
    args = ap.parse_args()
    sizes = [6, 12] if args.quick else sorted(int(n) for n in args.tasks.split(","))
    side = 128 if args.quick else args.side
    unit_tasks = 4 if args.quick else args.unit_tasks
    with tempfile.TemporaryDirectory(prefix="editthinker-images-bench-") as tmp:
        work = Path(tmp)
        note = ""
        if not args.quick:
            prepared, rows, setup_s = setup(work / "calibration", 32, side, args.grain)
            calib = one_size(work / "calibration" / "run", prepared, rows, 32, side, unit_tasks)
            sizes, note = fit(sizes, setup_s / 32, calib["wall_s"] / 32, args.max_s)
            print(f"calibration (32 tasks): {setup_s / 32:.3f} s per task source and prepare, "
                  f"{calib['wall_s'] / 32:.3f} s per task generate", flush=True)  # fmt: skip
        prepared, rows, setup_s = setup(work / "source", sizes[-1], side, args.grain)
        print(f"source and prepare of {sizes[-1]} tasks: {setup_s:.0f} s", flush=True)
        results = [one_size(work / f"n{n}", prepared, rows, n, side, unit_tasks) for n in sizes]
    what = f"images {side}px" + (f" grain {args.grain:g}" if args.grain else "")
    for r in results:
        n = r["tasks"]
        line(f"{what}, {n} tasks: generate wall", r["wall_s"], "s",
             f"({n / r['wall_s']:.1f} traj/s; {r['rows']} turns)")  # fmt: skip
        phases = ", ".join(f"{k} {v:.0f} MiB" for k, v in r["phase_peaks_mib"].items())
        line(f"{what}, {n} tasks: generate peak RSS", r["peak_rss_mib"], "MiB",
             f"({-(-n // r['unit_tasks'])} units of {r['unit_tasks']}; peak while {phases})")  # fmt: skip
        line(f"{what}, {n} tasks: bytes on disk / trajectory", r["disk_bytes"] / n, "B",
             f"({r['disk_bytes'] / 2**20:.0f} MiB in all, the image store included)")  # fmt: skip
        same = "equal" if (r["stored"], r["stored_bytes"]) == (r["unique"], r["unique_bytes"]) else "NOT EQUAL"
        line(f"{what}, {n} tasks: stored image bytes", r["stored_bytes"], "B",
             f"({r['stored']} images) vs {r['unique_bytes']} B of the {r['unique']} unique images: {same}")  # fmt: skip
    small, big = results[0], results[-1]
    ratio = big["peak_rss_mib"] / small["peak_rss_mib"]
    line(f"peak RSS {big['tasks']} / {small['tasks']} tasks", ratio, "x",
         f"(target within 15%: {abs(ratio - 1) <= 0.15})")  # fmt: skip
    if note:
        print(f"note: {note}", flush=True)


if __name__ == "__main__":
    main()
