from typing import Optional

from kfp import dsl
from kfp.dsl import Artifact, Input, Model, Output

from components import FACTORY_IMAGE


@dsl.component(base_image=FACTORY_IMAGE, install_kfp_package=False)
def promote(
    params_json: str,
    checkpoint: Input[Model],
    evaluation: Input[Artifact],
    registry: str,
    decision: Output[Artifact],
    benchmark_results: Optional[Input[Artifact]] = None,  # noqa: UP045 (kfp reads Optional, not X | None)
):
    """Register the checkpoint; make it champion if it wins (with benchmark_results: a benchmark step's results,
    for the gate params.benchmarks.gate names). Side effects: never cache this task."""
    import json
    from pathlib import Path

    from editthinker.config import parse_params
    from editthinker.stages import promote as stage

    params = parse_params(json.loads(params_json))
    root = Path(registry or params.promote.registry)
    report = Path(benchmark_results.path) / "report" if benchmark_results is not None else None
    result = stage.run(params, Path(checkpoint.path), Path(evaluation.path), root, report)
    Path(decision.path).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    decision.metadata.update(result)
