from kfp import dsl
from kfp.dsl import Artifact, Input, Model, Output

from components import FACTORY_IMAGE


@dsl.component(base_image=FACTORY_IMAGE, install_kfp_package=False)
def promote(
    params_json: str,
    checkpoint: Input[Model],
    evaluation: Input[Artifact],
    registry: str,
    decision: Output[Artifact],
):
    """Register the checkpoint; make it champion if it wins. Side effects: never cache this task."""
    import json
    from pathlib import Path

    from editthinker.config import parse_params
    from editthinker.stages import promote as stage

    params = parse_params(json.loads(params_json))
    root = Path(registry or params.promote.registry)
    result = stage.run(params, Path(checkpoint.path), Path(evaluation.path), root)
    Path(decision.path).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    decision.metadata.update(result)
