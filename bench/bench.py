"""`make bench`: prints the factory's speed and memory figures.

1. generation throughput (trajectories/s), in-process;
2. filter + split + validate throughput (rows/s, step samples/s) and peak RSS per stage (each in its own process)
   on >= 1,000,000 trajectory rows (real generated trajectories replicated under new ids); with --baseline-src,
   the same for another checkout's src/ and the ratios (per stage: wall time, peak RSS); the peak RSS at a quarter
   of the rows (memory flat in row count);
3. API throughput: expert calls/s and public-benchmark items/s at concurrency 1 and 16 against a 50 ms stub, and a
   whole generate run with the API expert and judge at concurrency 1 and 16 (its wall times and their ratio);
4. the demo (`editthinker run`) in a scratch copy: wall time and peak RSS per stage, SFT and RL steps/s;
5. a no-op `dvc repro` over the demo's outputs (after `dvc commit` records them);
6. generation at real image size (1024 px photo-like images, prepared tasks, the stand-in editor, expert and judge
   in process; 1,000 and 10,000 tasks, or what fits in 10 minutes at the same ratio): peak RSS of both runs,
   bytes on disk per trajectory, stored image bytes vs the unique images' (bench/real_images.py).
Numbers only; no pass/fail. Targets are in README.md. `--quick` runs every part at a tiny size (a smoke run that
CI makes, so the script cannot rot); its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from editthinker.config import Params, load_params, parse_params
from editthinker.records import TRAJECTORY_SCHEMA, iter_tables, write_tables
from editthinker.stages import generate

ROOT = Path(__file__).resolve().parents[1]
# --quick: every stage at a tiny size (a smoke run of the whole script, a minute or two on 2 cores)
QUICK = {
    "generate": {"num_tasks": 24, "shards": 1},
    "sft": {"max_steps": 4},
    "rl": {"max_steps": 2, "select": {"num_tasks": 4, "max_turns": 2}},
    "evaluate": {"num_tasks": 6, "max_turns": 2},
}


# filter + split + validate before validate streamed and before rows referred to images by hash (README's figures,
# 1,000,000 trajectory rows with PNG bytes in them, a loaded 2-core
# machine): wall s, peak RSS MiB per stage; the ratio to them is printed when no --baseline-src runs on this machine
RECORDED_DATA_PATH = {"filter": (17.0, 464.0), "split": (48.9, 1013.0), "validate": (66.6, 3380.0)}


def line(name: str, value: float, unit: str, note: str = "") -> None:
    print(f"{name:<44} {value:>12.2f} {unit:<14} {note}", flush=True)


def bench_generate(work: Path, params: Params, tasks: int) -> Path:
    p = params.model_copy(update={"generate": params.generate.model_copy(update={"num_tasks": tasks})})
    t0 = time.perf_counter()
    manifest = generate.run(p, work / "gen")
    dt = time.perf_counter() - t0
    line(
        "generate: trajectories/s",
        tasks / dt,
        "traj/s",
        f"({tasks} trajectories, {manifest['rows']} turns, {dt:.1f} s)",
    )
    return work / "gen"


_STAGE_SCRIPT = """
import json, resource, sys, time
from pathlib import Path
from editthinker.config import load_params
from editthinker.stages import filter as filter_stage, split, validate
params_path, stage, work, images = sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
params = load_params(Path(params_path))
t0 = time.perf_counter()
if stage == "filter":
    out = filter_stage.run(params, work / "big", work / "filt")["rows"]
elif stage == "split":
    parts = split.run(params, work / "filt", work / "sft", work / "rl")
    out = parts["sft"]["rows"] + parts["rl"]["rows"]
else:
    report = validate.run(params, work / "big", work / "sft", work / "rl", work / "report", images)
    out = report["datasets"]["trajectories"]["rows"]
wall = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"wall_s": wall, "rows_out": out, "peak_rss_mib": peak}))
"""


def replicate(seed_data: Path, out: Path, rows_target: int) -> int:
    """A trajectory dataset of >= rows_target rows: the generated trajectories again and again under new ids
    (built in Arrow, a shard of 20,000 rows at a time), referring to the generated images (the seed's image store,
    `seed_data/images`, which its manifest names)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from editthinker.images import carried_ref

    base = pa.concat_tables(list(iter_tables(seed_data)))
    copies = -(-rows_target // len(base))

    def tables():
        for c in range(copies):
            t = base
            for col in ("trajectory_id", "task_id"):
                renamed = pc.binary_join_element_wise(t.column(col), pa.scalar(f"c{c:04d}"), "-")
                t = t.set_column(t.schema.get_field_index(col), col, renamed)
            yield t

    extra = {"lineage": {"models": {}}, "images": carried_ref(seed_data)}
    return write_tables(out, tables(), TRAJECTORY_SCHEMA, 20_000, extra)["rows"]


def run_stage(src: Path, params_path: Path, stage: str, work: Path, images: Path) -> dict:
    """One data stage in a fresh interpreter whose `editthinker` comes from `src` (validate's image store:
    `images`): wall time and peak RSS."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    cmd = [sys.executable, "-c", _STAGE_SCRIPT, str(params_path), stage, str(work), str(images)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def bench_data_path(work: Path, params_path: Path, seed_data: Path, rows_target: int, baseline: Path | None) -> None:
    """filter, split and validate over >= rows_target trajectory rows, each stage in its own process (peak RSS
    per stage; target: under 20 s together). With `baseline` (the src/ folder of another checkout, e.g. a worktree
    of main), the same stages of that implementation run on the same data afterwards, and the ratios (wall time
    and peak RSS, per stage and together) are printed; the baseline must read this data layout (rows referring to
    images by sha256, validate taking the image store). Memory flat in row count: this implementation's stages
    run again on a quarter of the rows, and the peak RSS ratio of each stage (all rows over a quarter) is printed.
    The replicated rows refer to the generated images, so the image store stays the generated run's."""
    images = seed_data / "images"
    rows = replicate(seed_data, work / "big", rows_target)
    results: dict[str, dict[str, dict]] = {}
    for label, src in (("this", ROOT / "src"), ("baseline", baseline)):
        if src is None:
            continue
        for d in ("filt", "sft", "rl", "report"):
            shutil.rmtree(work / d, ignore_errors=True)
        results[label] = {s: run_stage(src, params_path, s, work, images) for s in ("filter", "split", "validate")}
    quarter = work / "quarter"
    quarter_rows = replicate(seed_data, quarter / "big", rows_target // 4)
    small = {s: run_stage(ROOT / "src", params_path, s, quarter, images) for s in ("filter", "split", "validate")}
    shutil.rmtree(quarter)
    for label, stages in results.items():
        total = sum(s["wall_s"] for s in stages.values())
        samples = stages["split"]["rows_out"]
        for stage, s in stages.items():
            line(f"  {label} {stage}: wall / peak RSS", s["wall_s"], "s", f"{s['peak_rss_mib']:.0f} MiB")
        note = f"({rows} trajectory rows -> {samples} step samples, {total:.1f} s)"
        line(f"{label} filter+split+validate: trajectory rows/s", rows / total, "rows/s", note)
        line(f"{label} filter+split+validate: step samples/s", samples / total, "samples/s")
    if "baseline" in results:
        for stage, s in results["this"].items():
            b = results["baseline"][stage]
            note = f"(baseline {b['wall_s']:.1f} s, {b['peak_rss_mib']:.0f} MiB; peak RSS / baseline's: "
            line(f"  {stage} speed-up over the baseline", b["wall_s"] / s["wall_s"], "x",
                 note + f"{s['peak_rss_mib'] / b['peak_rss_mib']:.2f})")  # fmt: skip
        this, base = (sum(s["wall_s"] for s in results[k].values()) for k in ("this", "baseline"))
        line("data path speed-up over the baseline", base / this, "x", f"(baseline {base:.1f} s, this {this:.1f} s)")
    else:
        for stage, s in results["this"].items():
            wall, rss = RECORDED_DATA_PATH[stage]
            note = f"(recorded {wall:.1f} s, {rss:.0f} MiB; peak RSS / recorded: {s['peak_rss_mib'] / rss:.2f})"
            line(f"  {stage} speed-up over the recorded figures", wall / s["wall_s"], "x", note)
    total = sum(s["wall_s"] for s in results["this"].values())
    line("this filter+split+validate: wall", total, "s", f"(target < 20 s; {rows} trajectory rows)")
    for stage, s in results["this"].items():
        ratio = s["peak_rss_mib"] / small[stage]["peak_rss_mib"]
        note = f"({s['peak_rss_mib']:.0f} MiB at {rows} rows, {small[stage]['peak_rss_mib']:.0f} MiB at {quarter_rows})"
        line(f"  {stage}: peak RSS, all rows / a quarter", ratio, "x", note)


def bench_demo(work: Path, params_path: Path) -> Path:
    demo = work / "demo"
    demo.mkdir()
    for item in ("src", "dvc.yaml", ".gitignore"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, demo / item)
    shutil.copy(params_path, demo / "params.yaml")
    exe = Path(sys.executable).parent / "editthinker"
    t0 = time.perf_counter()
    # the training curves too, where dvc.yaml's sft/rl commands put them: `dvc commit` needs every output
    env = {**os.environ, "EDITTHINKER_TRAINING_LOGS": "reports/training"}
    with open(work / "demo.log", "w") as log:
        subprocess.run([str(exe), "run", "--params", "params.yaml"], cwd=demo, check=True, stdout=log, stderr=log,
                       env=env)  # fmt: skip
    line("demo (editthinker run): wall time", time.perf_counter() - t0, "s", "(warm: environment already installed)")
    stats = json.loads((demo / "reports/run_stats.json").read_text())
    for s in stats["stages"]:
        line(f"  {s['stage']}: wall / peak RSS", s["wall_s"], "s", f"{s['peak_rss_mib']:.0f} MiB")
    line("demo: peak RSS of any stage", max(s["peak_rss_mib"] for s in stats["stages"]), "MiB")
    for stage in ("sft", "rl"):
        m = json.loads((demo / f"models/{stage}/metrics.json").read_text())
        line(f"{stage}: optimizer steps/s", m["steps_per_second"], "steps/s", f"({m.get('steps')} steps)")
    return demo


def bench_dvc_noop(demo: Path) -> None:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}

    def sh(*cmd: str) -> None:
        subprocess.run(cmd, cwd=demo, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    sh("git", "init", "-q")
    sh("dvc", "init", "-q")
    sh("dvc", "commit", "-f", "-q")  # record the demo's outputs in dvc.lock without re-running
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        out = subprocess.run(["dvc", "repro"], cwd=demo, check=True, env=env, capture_output=True, text=True).stdout
        best = min(best, time.perf_counter() - t0)
    ran = [ln for ln in out.splitlines() if ln.startswith("Running stage")]
    line("no-op dvc repro (best of 3)", best, "s", f"(stages re-run: {len(ran)})")


def bench_expert_api(calls: int, latency_s: float = 0.05) -> None:
    """Expert calls/s against a local OpenAI-compatible stub server (its own process, tests/openai_stub.py)
    that answers after `latency_s`, at concurrency 1, 4 and 16 (target: >= 8x the sequential rate at 16).
    Cache off: every call goes to the server; best of 3 runs per level."""
    from editthinker.backends.openai_api import OpenAIExpert
    from editthinker.roles import ThinkRequest
    from editthinker.world.scene import render_png
    from editthinker.world.tasks import make_task

    tasks = [make_task(3, i, 2, 4, {"canonical": 1.0, "paraphrase": 1.0}) for i in range(calls)]
    reqs = [
        ThinkRequest(render_png(t.source, 64), render_png(t.source, 64), t.instruction, t.instruction) for t in tasks
    ]
    os.environ.setdefault("EDITTHINKER_BENCH_KEY", "bench-key")
    stub = ROOT / "tests" / "openai_stub.py"
    cmd = [sys.executable, str(stub), "--delay-s", str(latency_s), "--max-s", "300"]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        base_url = server.stdout.readline().strip()
        base = 0.0
        for conc in (1, 4, 16):
            api = {"kind": "openai", "base_url": base_url, "model": "stub", "cache_dir": "", "concurrency": conc}
            expert = OpenAIExpert(parse_params({"expert": {**api, "api_key_env": "EDITTHINKER_BENCH_KEY"}}).expert)
            expert.think(reqs[:conc])  # open the connections, warm up
            rate = 0.0
            for _ in range(3):  # best of 3: the machine is shared
                t0 = time.perf_counter()
                verdicts = expert.think(reqs)
                rate = max(rate, len(reqs) / (time.perf_counter() - t0))
                assert all(v.format_ok for v in verdicts)
            expert.close()
            base = base or rate
            note = f"({rate / base:.1f}x sequential; {calls} calls, {latency_s * 1000:.0f} ms server latency)"
            line(f"expert API calls/s, concurrency {conc}", rate, "calls/s", note)
    finally:
        server.terminate()
        server.wait(timeout=10)


def bench_generate_api(work: Path, params: Params, tasks: int, latency_s: float = 0.05) -> None:
    """A whole generate run (synthetic editors) with the API expert and the API judge against a local stub server
    (its own process, tests/openai_stub.py --roles: answers by role, by a hash of the request) that answers after
    `latency_s`, at concurrency 1 and 16: both wall times and the ratio (target: >= 8x). Cache off. The two
    datasets must be the same: concurrency never changes the data."""
    os.environ.setdefault("EDITTHINKER_BENCH_KEY", "bench-key")
    stub = ROOT / "tests" / "openai_stub.py"
    cmd = [sys.executable, str(stub), "--roles", "--delay-s", str(latency_s), "--max-s", "900"]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        base_url = server.stdout.readline().strip()
        walls: dict[int, float] = {}
        hashes: dict[int, str] = {}
        calls: dict[int, int] = {}
        for conc in (1, 16):
            api = {"kind": "openai", "base_url": base_url, "model": "stub", "cache_dir": "", "concurrency": conc,
                   "api_key_env": "EDITTHINKER_BENCH_KEY"}  # fmt: skip
            data = params.model_dump(mode="json")
            data.update(expert=api, judge=api, generate={**data["generate"], "num_tasks": tasks, "shards": 1})
            t0 = time.perf_counter()
            manifest = generate.run(parse_params(data, "bench params"), work / f"gen-api-{conc}")
            walls[conc] = time.perf_counter() - t0
            hashes[conc] = manifest["dataset_sha256"]
            calls[conc] = int(sum(u.get("calls", 0) for u in manifest.get("api_usage", {}).values()))
            note = f"({tasks} trajectories, {manifest['rows']} turns, {calls[conc]} calls of {latency_s * 1000:.0f} ms)"
            line(f"generate with API expert + judge, concurrency {conc}", walls[conc], "s", note)
        same = "same dataset" if hashes[1] == hashes[16] else "DATASETS DIFFER"
        line("generate API speed-up, concurrency 16 over 1", walls[1] / walls[16], "x", f"(target >= 8x; {same})")
    finally:
        server.terminate()
        server.wait(timeout=10)


def quick_params(work: Path, params_path: Path) -> Path:
    """params.yaml with QUICK's sizes, for the smoke run."""
    data = yaml.safe_load(params_path.read_text())
    for section, values in QUICK.items():
        data[section] = {**data.get(section, {}), **values}
    parse_params(data, "quick params")  # fail here, not in a stage
    path = work / "quick-params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--gen-tasks", type=int, default=200)
    ap.add_argument("--rows", type=int, default=1_000_000, help="trajectory rows of the data-path bench")
    ap.add_argument(
        "--baseline-src",
        type=Path,
        default=None,
        help="src/ of another checkout (e.g. a worktree of main): its data path runs too, for the ratio",
    )
    ap.add_argument("--api-calls", type=int, default=96)
    ap.add_argument("--gen-api-tasks", type=int, default=256, help="tasks of the generate run with API roles")
    ap.add_argument("--quick", action="store_true", help="every part at a tiny size: a smoke run, not figures")
    ap.add_argument("--skip-demo", action="store_true")
    ap.add_argument("--skip-overhead", action="store_true", help="skip the loop's per-turn overhead figures")
    ap.add_argument("--skip-api", action="store_true", help="skip the API throughput figures (expert, generate)")
    ap.add_argument("--skip-data-path", action="store_true", help="skip the filter + split + validate figures")
    ap.add_argument("--skip-images", action="store_true", help="skip generation at real image size")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="editthinker-bench-") as tmp:
        work = Path(tmp)
        params_path = quick_params(work, args.params) if args.quick else args.params
        if args.quick:
            args.gen_tasks, args.rows, args.api_calls, args.gen_api_tasks = 24, 2_000, 16, 16
        params = load_params(params_path)
        seed_data = bench_generate(work, params, args.gen_tasks)
        if not args.skip_data_path:
            bench_data_path(work, params_path, seed_data, args.rows, args.baseline_src)
        if not args.skip_api:
            bench_expert_api(args.api_calls)
            bench_generate_api(work, params, args.gen_api_tasks)
            print("public benchmark run + score, 50 ms stub judge (bench/benchmark_throughput.py):", flush=True)
            size = ["--items", "16"] if args.quick else []
            subprocess.run([sys.executable, str(ROOT / "bench/benchmark_throughput.py"), *size], check=True)
        if not args.skip_overhead:
            print("loop overhead outside model calls (editthinker edit, tiny models):", flush=True)
            quick = ["--quick"] if args.quick else []
            subprocess.run([sys.executable, str(ROOT / "bench/edit_overhead.py"), *quick], check=True)
        if not args.skip_demo:
            demo = bench_demo(work, params_path)
            bench_dvc_noop(demo)
        if not args.skip_images:
            bench_real_images(args.quick)


def bench_real_images(quick: bool) -> None:
    """Generation from prepared 1024 px tasks at two sizes (bench/real_images.py, in its own processes)."""
    print("generation at real image size (bench/real_images.py):", flush=True)
    subprocess.run([sys.executable, str(ROOT / "bench/real_images.py"), *(["--quick"] if quick else [])], check=True)


if __name__ == "__main__":
    main()
