from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components import FACTORY_IMAGE


@dsl.component(base_image=FACTORY_IMAGE, install_kfp_package=False)
def generate(
    params_json: str,
    trajectories: Output[Dataset],
    tasks: Input[Dataset] = None,  # type: ignore[assignment]
    units_s3_json: str = "",
):
    """Multi-turn trajectories, the expert playing the thinker; their image store is in trajectories/images.
    `tasks`: a prepared folder (`editthinker prepare`); none: the synthetic world's tasks. `units_s3_json` (params
    `s3`, set at compile time when it names a bucket): finished units are kept on S3 too, so a retry resumes them."""
    import json
    from pathlib import Path

    from editthinker.config import parse_params
    from editthinker.stages import generate as stage
    from editthinker.storage_s3 import unit_mirror

    prepared = Path(tasks.path) if tasks is not None else None
    stage.run(parse_params(json.loads(params_json)), Path(trajectories.path), tasks=prepared,
              mirror=unit_mirror(units_s3_json))  # fmt: skip


@dsl.component(base_image=FACTORY_IMAGE, install_kfp_package=False)
def generate_shard(params_json: str, shard: int, trajectories: Output[Dataset],
                   tasks: Input[Dataset] = None, units_s3_json: str = ""):  # type: ignore[assignment]  # fmt: skip
    """One shard of the generation fan-out: the trajectories of this shard's tasks (of the prepared folder
    `tasks`, or the synthetic world's), with the images they refer to in trajectories/images. With `units_s3_json`
    (params `s3`), finished units are kept on S3 too: a retried shard starts on a fresh disk and resumes them."""
    import json
    from pathlib import Path

    from editthinker.config import parse_params
    from editthinker.stages import generate as stage
    from editthinker.storage_s3 import unit_mirror

    prepared = Path(tasks.path) if tasks is not None else None
    stage.run_shard(parse_params(json.loads(params_json)), int(shard), Path(trajectories.path), tasks=prepared,
                    mirror=unit_mirror(units_s3_json))  # fmt: skip


@dsl.component(base_image=FACTORY_IMAGE, install_kfp_package=False)
def generate_gather(params_json: str, shards: Input[list[Dataset]], trajectories: Output[Dataset]):
    """Join every generation shard into the dataset `generate` would write (byte for byte)."""
    import json
    from pathlib import Path

    from editthinker.config import parse_params
    from editthinker.stages import generate as stage

    params = parse_params(json.loads(params_json))
    stage.gather(params, [Path(s.path) for s in shards], Path(trajectories.path))
