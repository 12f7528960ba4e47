from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components import FACTORY_IMAGE


@dsl.component(base_image=FACTORY_IMAGE, install_kfp_package=False)
def rl(params_json: str, rl_data: Input[Dataset], sft_checkpoint: Input[Model], checkpoint: Output[Model]):
    """GRPO from the SFT checkpoint on RL step samples."""
    import json
    from pathlib import Path

    from editthinker.config import parse_params
    from editthinker.stages import rl as stage

    params = parse_params(json.loads(params_json))
    stage.run(params, Path(rl_data.path), Path(sft_checkpoint.path), Path(checkpoint.path))
