from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components import FACTORY_IMAGE


@dsl.component(base_image=FACTORY_IMAGE, install_kfp_package=False)
def filter(params_json: str, trajectories: Input[Dataset], filtered: Output[Dataset]):
    """Keep trajectories whose later turns beat the first; truncate at the best turn."""
    import json
    from pathlib import Path

    from editthinker.config import parse_params
    from editthinker.stages import filter as stage

    stage.run(parse_params(json.loads(params_json)), Path(trajectories.path), Path(filtered.path))
