from kfp import dsl
from kfp.dsl import Artifact, Input, Metrics, Model, Output

from components import FACTORY_IMAGE


@dsl.component(base_image=FACTORY_IMAGE, install_kfp_package=False)
def evaluate(
    params_json: str,
    sft_checkpoint: Input[Model],
    rl_checkpoint: Input[Model],
    evaluation: Output[Artifact],
    metrics: Output[Metrics],
):
    """Held-out benchmark; logs the challenger's scalar metrics from summary.json."""
    import json
    from pathlib import Path

    from editthinker.config import parse_params
    from editthinker.stages import evaluate as stage

    params = parse_params(json.loads(params_json))
    stage.run(params, Path(sft_checkpoint.path), Path(rl_checkpoint.path), Path(evaluation.path))
    summary = json.loads((Path(evaluation.path) / "summary.json").read_text())
    for name, value in sorted(summary["challenger"].items()):
        if isinstance(value, int | float) and not isinstance(value, bool):
            metrics.log_metric(f"challenger_{name}", value)
