from typing import Optional

from kfp import dsl
from kfp.dsl import Artifact, Input, Model, Output

from components import FACTORY_IMAGE


@dsl.component(base_image=FACTORY_IMAGE, install_kfp_package=False)
def challenge(
    params_json: str,
    checkpoint: Input[Model],
    evaluation: Input[Artifact],
    registry: str,
    comparison: Output[Artifact],
    benchmark_results: Optional[Input[Artifact]] = None,  # noqa: UP045 (kfp reads Optional, not X | None)
) -> bool:
    """Does the challenger beat the registry's champion (the returned bool)? Reads the registry, writes nothing:
    never cache. A single return value, not a NamedTuple: kfp.local cannot read a named output in dsl.If.
    benchmark_results: a benchmark step's results, for the gate params.benchmarks.gate names."""
    import json
    from pathlib import Path

    from editthinker.config import parse_params
    from editthinker.stages import promote as stage

    params = parse_params(json.loads(params_json))
    report = Path(benchmark_results.path) / "report" if benchmark_results is not None else None
    root = Path(registry or params.promote.registry)
    result = stage.challenge(params, Path(checkpoint.path), Path(evaluation.path), root, report)
    Path(comparison.path).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    comparison.metadata.update(result)
    return bool(result["beats_champion"])
