from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components import FACTORY_IMAGE


@dsl.component(base_image=FACTORY_IMAGE, install_kfp_package=False)
def sft(
    params_json: str,
    sft_data: Input[Dataset],
    trajectories: Input[Dataset],
    checkpoint: Output[Model],
    metrics: Output[Metrics],
    training_log: Output[Artifact],
    num_processes: int = 1,
    accelerate_config: str = "",
):
    """Supervised fine-tuning of the thinker on SFT step samples; on several GPUs (num_processes > 1) under
    `accelerate launch` with accelerate_config. Logs the final metrics; the DVCLive curves go to training_log.
    `trajectories`: the generated dataset whose image store (its images/) the step samples refer to."""
    from pathlib import Path

    from editthinker.launch import run_training, scalar_metrics
    from editthinker.summaries import report_metrics

    inputs = [Path(sft_data.path), Path(trajectories.path) / "images"]
    result = run_training("sft", params_json, inputs, Path(checkpoint.path), num_processes, accelerate_config,
                          Path(training_log.path))  # fmt: skip
    report_metrics(scalar_metrics(result), metrics.log_metric, Path(metrics.path))
