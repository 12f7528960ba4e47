"""One benchmark as a pipeline step: every benchmarked editor under each system, scored, reported.

`run_step` is what the KFP `benchmark` component calls (components/benchmark/): for each editor of
params.benchmarks.editors (all editors by default) it runs the systems of params.benchmarks.systems (the
editor alone, the trained thinker `checkpoint`, the API expert as thinker), scores each run with the
benchmark's judge and writes the comparison report. Runs live under `<out>/runs` with their cache, so a
retried step resumes. Items that failed to edit make the step fail after everything else is written.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from editthinker.benchmarks import get_benchmark
from editthinker.benchmarks.report import write_report
from editthinker.benchmarks.runner import run
from editthinker.benchmarks.scoring import score_run
from editthinker.config import Params

log = logging.getLogger(__name__)


def systems_for(params: Params, checkpoint: Path | None) -> list[str]:
    out = []
    for kind in params.benchmarks.systems:
        if kind == "thinker":
            if checkpoint is None:
                continue
            out.append(f"thinker:{checkpoint}")
        elif kind == "expert" and params.expert.kind == "synthetic":
            log.warning("benchmark: the synthetic expert cannot play the thinker on real images; skipping 'expert'")
        else:
            out.append(kind)
    return out


def run_step(params: Params, benchmark: str, checkpoint: Path | None, out: Path, data: str = "") -> dict[str, Any]:
    """Run, score and report one benchmark; returns {"metrics": {name: value}, "report": ..., "failed": n}."""
    bench = get_benchmark(benchmark)
    cfg = params.benchmarks
    runs = Path(out) / "runs"
    failed = 0
    for editor in cfg.editors or [e.name for e in params.editors]:
        for system in systems_for(params, checkpoint):
            summary = run(params, benchmark, data, editor, system, cfg.max_turns, runs)
            failed += summary["items"]["failed"]
            score_run(params, Path(summary["run_dir"]))
    report = write_report([runs], Path(out) / "report", cfg.max_turns)
    metrics: dict[str, float] = {}
    for row in report["rows"]:
        res = row["results"].get(benchmark)
        if res is None or res["value"] is None:
            continue
        name = f"{benchmark}_{row['editor']}_{row['system']}_{bench.headline}"
        metrics[name] = float(res["value"])
        if res["ci95"]:
            metrics[name + "_ci_low"], metrics[name + "_ci_high"] = (float(x) for x in res["ci95"])
        metrics[f"{benchmark}_{row['editor']}_{row['system']}_scored_fraction"] = (
            res["counts"]["scored"] / res["counts"]["items"] if res["counts"]["items"] else 0.0
        )
    if failed:
        raise RuntimeError(f"{benchmark}: {failed} items failed to edit (see run.json 'failed'); rerun to resume")
    return {"metrics": metrics, "report": report, "failed": failed}
