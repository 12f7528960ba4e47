"""Throughput of `editthinker benchmark run` + `score` against a 50 ms OpenAI-compatible stub, at API
concurrency 1 and 16.

A GEdit-format copy of synthetic-world tasks (64 px scenes) is run with the synthetic `painter` editor and the
expert over the API as thinker (one critique per item: the stub's expert is satisfied), then scored with the
GEdit protocol (two judge calls per item). The stub (tests/openai_stub.py) runs in its own process and waits
50 ms before every answer. Caches are off and every measurement starts from an empty run folder.
Prints items/s of the run, of the scoring and of both, per concurrency, and the speed-up. Numbers only.

    python bench/benchmark_throughput.py            # 256 items
    python bench/benchmark_throughput.py --quick    # 64 items
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from test_modules import TESTS, tests_module

from editthinker.benchmarks import runner, scoring
from editthinker.config import parse_params

STUB = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("openai_stub", {stub!r})
stub = sys.modules["openai_stub"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(stub)
Answer, StubOpenAIServer = stub.Answer, stub.StubOpenAIServer
EXPERT = Answer('{{"is_satisfied": true, "reason": "looks right", "new_rewritten_prompt": ""}}')
JUDGE = Answer('{{"score": [8, 7], "reasoning": "fine"}}')
def respond(body):
    return EXPERT if body["messages"][0]["role"] == "system" else JUDGE
with StubOpenAIServer(respond=respond, delay_s={delay}) as srv:
    print(srv.base_url, flush=True)
    time.sleep(900)
"""


def measure(work: Path, data: Path, base_url: str, concurrency: int) -> tuple[float, float, int]:
    api = {"base_url": base_url, "cache_dir": "", "concurrency": concurrency, "max_retries": 0, "timeout_s": 30}
    params = parse_params({
        "editors": [{"name": "painter", "kind": "synthetic", "profile": "painter"}],
        "expert": {"kind": "openai", "model": "stub", **api},
        "benchmarks": {"judge": api, "batch_size": 64, "bootstrap_resamples": 0},
    })  # fmt: skip
    out = work / f"runs-c{concurrency}"
    t0 = time.perf_counter()
    summary = runner.run(params, "gedit", str(data), "painter", "expert", 2, out)
    t1 = time.perf_counter()
    result = scoring.score_run(params, Path(summary["run_dir"]))
    t2 = time.perf_counter()
    assert result["complete"], result["counts"]
    return t1 - t0, t2 - t1, summary["items"]["edited"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="64 items instead of 256")
    ap.add_argument("--items", type=int, default=0)
    ap.add_argument("--latency-s", type=float, default=0.05)
    args = ap.parse_args()
    n = args.items or (64 if args.quick else 256)
    work = Path(tempfile.mkdtemp(prefix="benchmark-throughput-"))
    code = STUB.format(stub=str(TESTS / "openai_stub.py"), delay=args.latency_s)
    stub = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert stub.stdout is not None
        base_url = stub.stdout.readline().strip()
        tests_module("openai_stub")  # benchmark_fixtures imports it
        tests_module("benchmark_fixtures").write_world_gedit(work / "gedit", n)
        print(f"{n} GEdit-format items, stub latency {1000 * args.latency_s:.0f} ms, painter editor, API expert")
        print(f"{'concurrency':>11} {'run items/s':>12} {'score items/s':>14} {'run+score items/s':>18}")
        rates = {}
        for c in (1, 16):
            run_s, score_s, done = measure(work, work / "gedit", base_url, c)
            rates[c] = done / (run_s + score_s)
            print(f"{c:>11} {done / run_s:>12.2f} {done / score_s:>14.2f} {rates[c]:>18.2f}")
        print(f"speed-up at concurrency 16: {rates[16] / rates[1]:.1f}x (run + score)")
    finally:
        stub.terminate()
        stub.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
