from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components import FACTORY_IMAGE


@dsl.component(base_image=FACTORY_IMAGE, install_kfp_package=False)
def sft(params_json: str, sft_data: Input[Dataset], checkpoint: Output[Model]):
    """Supervised fine-tuning of the thinker on SFT step samples."""
    import json
    from pathlib import Path

    from editthinker.config import parse_params
    from editthinker.stages import sft as stage

    stage.run(parse_params(json.loads(params_json)), Path(sft_data.path), Path(checkpoint.path))
