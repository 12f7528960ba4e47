from kfp import dsl
from kfp.dsl import Artifact, Input, Markdown, Metrics, Model, Output

from components import FACTORY_IMAGE


@dsl.component(base_image=FACTORY_IMAGE, install_kfp_package=False)
def evaluate(
    params_json: str,
    sft_checkpoint: Input[Model],
    rl_checkpoint: Input[Model],
    evaluation: Output[Artifact],
    metrics: Output[Metrics],
    summary: Output[Markdown],
):
    """Held-out benchmark. The KFP UI shows its numbers (Metrics: the challenger's, its lift, every system's)
    and its summary table (Markdown); `evaluation` holds every report file."""
    import json
    from pathlib import Path

    from editthinker.config import parse_params
    from editthinker.stages import evaluate as stage
    from editthinker.summaries import report_metrics

    params = parse_params(json.loads(params_json))
    result = stage.run(params, Path(sft_checkpoint.path), Path(rl_checkpoint.path), Path(evaluation.path))
    report_metrics(stage.scalar_metrics(result), metrics.log_metric, Path(metrics.path))
    Path(summary.path).parent.mkdir(parents=True, exist_ok=True)
    Path(summary.path).write_text((Path(evaluation.path) / "summary.md").read_text())
