"""The factory as KFP pipelines: generate -> filter -> split -> validate -> sft -> rl -> evaluate -> promote.

`editthinker_data` is the data half alone (generate .. validate); `editthinker_factory` is the whole line.
Both build their data steps with the same helper, so the two cannot drift. Training waits for validation:
bad data stops the run before any training. Promotion writes to the registry (a side effect), so its task
is never cached; every other step keeps caching on (same params and inputs -> same outputs).

    compile_pipeline("factory.yaml")                  # for a KFP backend
    run_local(params, Path("runs/x"))                 # kfp.local, subprocesses of this interpreter
"""

import importlib.util
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any, NamedTuple

from components.evaluate.component import evaluate
from components.filter.component import filter as filter_
from components.generate.component import generate
from components.promote.component import promote
from components.rl.component import rl
from components.sft.component import sft
from components.split.component import split
from components.validate.component import validate
from kfp import compiler, dsl, local
from kfp.dsl import Artifact, Dataset, Metrics, Model

from editthinker.config import Params


class DataOutputs(NamedTuple):
    trajectories: Dataset
    filtered: Dataset
    sft_data: Dataset
    rl_data: Dataset
    validation: Artifact


class FactoryOutputs(NamedTuple):
    trajectories: Dataset
    filtered: Dataset
    sft_data: Dataset
    rl_data: Dataset
    validation: Artifact
    sft_checkpoint: Model
    rl_checkpoint: Model
    evaluation: Artifact
    metrics: Metrics
    decision: Artifact


def _data_steps(params_json: str) -> dict[str, Any]:
    """Add generate, filter, split and validate to the pipeline being defined; return their tasks."""
    gen = generate(params_json=params_json)
    filt = filter_(params_json=params_json, trajectories=gen.outputs["trajectories"])
    spl = split(params_json=params_json, filtered=filt.outputs["filtered"])
    val = validate(
        params_json=params_json,
        trajectories=gen.outputs["trajectories"],
        sft_data=spl.outputs["sft_data"],
        rl_data=spl.outputs["rl_data"],
    )
    return {"generate": gen, "filter": filt, "split": spl, "validate": val}


def _data_outputs(t: dict[str, Any]) -> dict[str, Any]:
    return {
        "trajectories": t["generate"].outputs["trajectories"],
        "filtered": t["filter"].outputs["filtered"],
        "sft_data": t["split"].outputs["sft_data"],
        "rl_data": t["split"].outputs["rl_data"],
        "validation": t["validate"].outputs["report"],
    }


@dsl.pipeline(name="editthinker-data", description="Trajectories, filter, step samples, data checks.")
def editthinker_data(params_json: str) -> DataOutputs:
    return DataOutputs(**_data_outputs(_data_steps(params_json)))


@dsl.pipeline(name="editthinker-factory", description="Data, SFT, RL, evaluation and promotion of a thinker.")
def editthinker_factory(params_json: str, registry: str = "") -> FactoryOutputs:
    """`registry` empty means params.promote.registry, as seen from the promote task's working directory."""
    t = _data_steps(params_json)
    sft_task = sft(params_json=params_json, sft_data=t["split"].outputs["sft_data"]).after(t["validate"])
    rl_task = rl(
        params_json=params_json, rl_data=t["split"].outputs["rl_data"], sft_checkpoint=sft_task.outputs["checkpoint"]
    )
    eval_task = evaluate(
        params_json=params_json,
        sft_checkpoint=sft_task.outputs["checkpoint"],
        rl_checkpoint=rl_task.outputs["checkpoint"],
    )
    promote_task = promote(
        params_json=params_json,
        checkpoint=rl_task.outputs["checkpoint"],
        evaluation=eval_task.outputs["evaluation"],
        registry=registry,
    ).set_caching_options(enable_caching=False)
    return FactoryOutputs(
        **_data_outputs(t),
        sft_checkpoint=sft_task.outputs["checkpoint"],
        rl_checkpoint=rl_task.outputs["checkpoint"],
        evaluation=eval_task.outputs["evaluation"],
        metrics=eval_task.outputs["metrics"],
        decision=promote_task.outputs["decision"],
    )


PIPELINES = {"factory": editthinker_factory, "data": editthinker_data}


def params_json(params: Params) -> str:
    return json.dumps(params.model_dump(mode="json"), sort_keys=True)


def compile_pipeline(path: str | Path, pipeline: str = "factory") -> Path:
    """Compile a pipeline (factory or data) to KFP IR YAML at `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(PIPELINES[pipeline], package_path=str(path))
    return path


def _ensure_importable() -> None:
    """Subprocess tasks must import editthinker and components: put their roots on PYTHONPATH."""
    import editthinker

    roots = [str(Path(editthinker.__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1])]
    current = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(current + [r for r in roots if r not in current])


def _hide_shadowed_docker() -> None:
    """A `docker/` folder beside `components/` (Dockerfiles) imports as an empty namespace package named
    `docker`, which kfp.local takes for the Docker SDK and fails on. Without the real SDK, make
    `import docker` fail instead, so kfp.local sees Docker as absent (the subprocess runner needs none)."""
    if "docker" not in sys.modules:
        spec = importlib.util.find_spec("docker")
        if spec is not None and spec.origin in (None, "namespace"):
            sys.modules["docker"] = None  # type: ignore[assignment]


def run_local(
    params: Params,
    workdir: Path,
    pipeline: str = "factory",
    registry: str | Path | None = None,
    enable_caching: bool = False,
) -> dict[str, str]:
    """Run a pipeline under kfp.local (subprocesses, no containers); return its output artifacts' paths.

    Task outputs go under workdir/kfp/<run>/<task>/. The registry defaults to params.promote.registry,
    relative to `workdir` when it is a relative path.
    """
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    _ensure_importable()
    _hide_shadowed_docker()
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(workdir / "kfp"),
        workspace_root=str(workdir / "kfp-workspace"),
        enable_caching=enable_caching,
    )
    args: dict[str, Any] = {"params_json": params_json(params)}
    if pipeline == "factory":
        args["registry"] = str(workdir / (registry or params.promote.registry))
    with warnings.catch_warnings():
        # the factory image has Python; kfp.local only guesses from the image's name
        warnings.filterwarnings("ignore", message=".*non-Python base image.*", category=RuntimeWarning)
        task = PIPELINES[pipeline](**args)
    return {name: artifact.path for name, artifact in task.outputs.items()}


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Compile the KFP pipelines to YAML.")
    parser.add_argument("--out", type=Path, default=Path("build/pipelines"), help="output folder")
    args = parser.parse_args(argv)
    for name in PIPELINES:
        print(compile_pipeline(args.out / f"editthinker-{name}.yaml", name))


if __name__ == "__main__":
    main()
