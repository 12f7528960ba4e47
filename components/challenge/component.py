from kfp import dsl
from kfp.dsl import Artifact, Input, Model, Output

from components import FACTORY_IMAGE


@dsl.component(base_image=FACTORY_IMAGE, install_kfp_package=False)
def challenge(
    params_json: str,
    checkpoint: Input[Model],
    evaluation: Input[Artifact],
    registry: str,
    comparison: Output[Artifact],
) -> bool:
    """Does the challenger beat the registry's champion (the returned bool)? Reads the registry, writes nothing:
    never cache. A single return value, not a NamedTuple: kfp.local cannot read a named output in dsl.If."""
    import json
    from pathlib import Path

    from editthinker.config import parse_params
    from editthinker.stages import promote as stage

    params = parse_params(json.loads(params_json))
    result = stage.challenge(
        params, Path(checkpoint.path), Path(evaluation.path), Path(registry or params.promote.registry)
    )
    Path(comparison.path).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    comparison.metadata.update(result)
    return bool(result["beats_champion"])
