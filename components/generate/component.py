from kfp import dsl
from kfp.dsl import Dataset, Output

from components import FACTORY_IMAGE


@dsl.component(base_image=FACTORY_IMAGE, install_kfp_package=False)
def generate(params_json: str, trajectories: Output[Dataset]):
    """Multi-turn trajectories, the expert playing the thinker."""
    import json
    from pathlib import Path

    from editthinker.config import parse_params
    from editthinker.stages import generate as stage

    stage.run(parse_params(json.loads(params_json)), Path(trajectories.path))
