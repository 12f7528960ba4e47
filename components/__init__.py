"""KFP drivers: one lightweight Python component per stage, each a thin call into editthinker.stages.

A component body parses the params JSON, calls a stage function (`run`, or generate's `run_shard` / `gather`
for the fan-out, promote's `challenge` for the promotion gate) with its artifacts' local paths, and nothing
else; the logic lives in the stage. Bodies import editthinker inside the function because KFP ships only the
function's source to the container, whose image has the package and kfp installed. FACTORY_IMAGE is the
default image; pipelines/platform.py sets each task's image from params.kubernetes (image, gpu_image).
"""

FACTORY_IMAGE = "editthinker-factory:cpu"  # = KubernetesConfig().image (tested)
IMAGE_CONFIGS = "/opt/editthinker/configs"  # where docker/Dockerfile.* copy configs/ (tested): accelerate configs
