"""KFP drivers: one lightweight Python component per stage, each a thin call into editthinker.stages.

A component body parses the params JSON, calls the stage's `run` with its artifacts' local paths, and
nothing else; the logic lives in the stage. Bodies import editthinker inside the function because KFP ships
only the function's source to the container, whose image (FACTORY_IMAGE) has the package and kfp installed.
"""

FACTORY_IMAGE = "editthinker-factory:cpu"
