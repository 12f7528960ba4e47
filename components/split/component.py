from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components import FACTORY_IMAGE


@dsl.component(base_image=FACTORY_IMAGE, install_kfp_package=False)
def split(params_json: str, filtered: Input[Dataset], sft_data: Output[Dataset], rl_data: Output[Dataset]):
    """Unroll trajectories into step samples; high-variance ones go to RL, the rest to SFT."""
    import json
    from pathlib import Path

    from editthinker.config import parse_params
    from editthinker.stages import split as stage

    stage.run(parse_params(json.loads(params_json)), Path(filtered.path), Path(sft_data.path), Path(rl_data.path))
