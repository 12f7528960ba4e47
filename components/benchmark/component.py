from kfp import dsl
from kfp.dsl import Artifact, Input, Markdown, Metrics, Model, Output

from components import FACTORY_IMAGE


@dsl.component(base_image=FACTORY_IMAGE, install_kfp_package=False)
def benchmark(
    params_json: str,
    benchmark: str,
    checkpoint: Input[Model],
    results: Output[Artifact],
    metrics: Output[Metrics],
    report: Output[Markdown],
):
    """One public benchmark: each editor alone, + the trained thinker, + the expert; scored and reported.
    `results` holds the runs (official layouts, traces, scores) and report/ (json, md, png); the headline
    metrics with their 95% intervals go to `metrics`, the Markdown report to `report`."""
    import json
    import shutil
    from pathlib import Path

    from editthinker.benchmarks.step import run_step
    from editthinker.config import parse_params

    params = parse_params(json.loads(params_json))
    out = run_step(params, benchmark, Path(checkpoint.path), Path(results.path))
    for name, value in sorted(out["metrics"].items()):
        metrics.log_metric(name, value)
    # files too: an artifact without one is a cache miss for kfp.local, and nothing to browse for the UI
    Path(metrics.path).parent.mkdir(parents=True, exist_ok=True)
    Path(metrics.path).write_text(json.dumps(out["metrics"], indent=2, sort_keys=True) + "\n")
    Path(report.path).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(results.path) / "report" / "report.md", report.path)
    results.metadata.update({"benchmark": benchmark, "runs": len(out["report"]["rows"])})
