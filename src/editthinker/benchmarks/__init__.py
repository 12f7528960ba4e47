"""The four public instruction-editing benchmarks the method reports, behind one interface (base.Benchmark).

Adding a benchmark is one module here and one entry in BENCHMARKS.
"""

from __future__ import annotations

from editthinker.benchmarks.base import Benchmark
from editthinker.benchmarks.gedit import GEdit
from editthinker.benchmarks.imgedit import ImgEdit
from editthinker.benchmarks.kris import Kris
from editthinker.benchmarks.risebench import RISEBench

BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (ImgEdit(), GEdit(), RISEBench(), Kris())}


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {sorted(BENCHMARKS)}")
    return BENCHMARKS[name]
