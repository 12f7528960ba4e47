from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from components import FACTORY_IMAGE


@dsl.component(base_image=FACTORY_IMAGE, install_kfp_package=False)
def validate(
    params_json: str,
    trajectories: Input[Dataset],
    sft_data: Input[Dataset],
    rl_data: Input[Dataset],
    report: Output[Artifact],
):
    """Data checks; the stage raises (and so fails this task) when the data does not pass."""
    import json
    from pathlib import Path

    from editthinker.config import parse_params
    from editthinker.stages import validate as stage

    params = parse_params(json.loads(params_json))
    trajectories_dir = Path(trajectories.path)  # its image store, images/, is the one every dataset refers to
    stage.run(params, trajectories_dir, Path(sft_data.path), Path(rl_data.path), Path(report.path),
              trajectories_dir / "images")  # fmt: skip
