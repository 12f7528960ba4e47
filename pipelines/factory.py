"""The factory as KFP pipelines, built from params at compile time (platform settings: `kubernetes`).

    editthinker-data      generate (fan-out over generate.shards, gathered) -> filter -> split -> validate
    editthinker-train     (imported step samples) sft -> rl -> evaluate -> challenge -> [beats champion] promote
    editthinker-factory   both, training waiting for validation (bad data stops the run before any training)

Every step's settings (image, accelerator, cpu/memory, node selector, tolerations, PVCs, secrets by name,
timeout, retries) come from params.kubernetes through `pipelines.platform.apply`, once per task. A training
step (sft, rl) with accelerator_count > 1 runs its stage under `accelerate launch` over that many GPUs
(`pipelines.platform.training_launch`, `editthinker.launch`). In the KFP UI, evaluate shows its numbers as
Metrics and its summary table as Markdown; sft and rl show their final Metrics and keep their DVCLive curves. Data,
training and evaluation steps are cached (same params and inputs -> same outputs); `challenge` reads the
registry and `promote` writes it, so neither is ever cached. Each step receives only the params sections its
stage reads (`editthinker.stages.SECTIONS`), as the run-time argument `<stage>_params`, so its cache key
changes only when one of those sections changes. These and `registry` are the run-time arguments
(`pipeline_arguments`): nothing of params is compiled in but the platform settings and the number of
generation shards. Compile and submit with the same params (the `editthinker pipeline` commands do).

    compile_pipeline("factory.yaml", "factory", params)    # for a KFP backend
    run_local(params, Path("runs/x"))                       # kfp.local, subprocesses of this interpreter

Generating from your own data: compile with `prepared_tasks=True` and the data and factory pipelines take one more
run-time argument, `tasks_uri`, the URI of a prepared folder (`editthinker prepare --out ...` copied to the
artifact store); generate (every shard) reads its tasks from there instead of the synthetic world.
"""

import inspect
import json
import warnings
from pathlib import Path
from typing import Any, NamedTuple

from kfp import compiler, dsl, local
from kfp.dsl import Artifact, Dataset, Markdown, Metrics, Model
from kfp.dsl.graph_component import GraphComponent

from components.benchmark.component import benchmark
from components.challenge.component import challenge
from components.evaluate.component import evaluate
from components.filter.component import filter as filter_
from components.generate.component import generate, generate_gather, generate_shard
from components.promote.component import promote
from components.rl.component import rl
from components.sft.component import sft
from components.split.component import split
from components.validate.component import validate
from editthinker.config import BENCHMARK_NAMES, Params
from editthinker.stages import stage_params
from pipelines.platform import apply, training_launch


class DataOutputs(NamedTuple):
    trajectories: Dataset
    filtered: Dataset
    sft_data: Dataset
    rl_data: Dataset
    validation: Artifact


class TrainOutputs(NamedTuple):
    sft_checkpoint: Model
    rl_checkpoint: Model
    evaluation: Artifact
    metrics: Metrics
    summary: Markdown
    comparison: Artifact


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
    summary: Markdown
    comparison: Artifact


def _data_steps(params: Params, p: dict[str, Any], tasks_uri: Any = None) -> dict[str, Any]:
    """Add the data steps to the pipeline being defined; return their tasks. `p` holds each stage's params
    argument by stage name. More than one generation shard fans out (dsl.ParallelFor over the shard numbers,
    fixed at compile time) and is gathered (dsl.Collected). `tasks_uri` (a pipeline argument): the prepared tasks
    generate reads, imported as a Dataset; None: the synthetic world's tasks."""
    k8s = params.kubernetes
    shards = params.generate.shards
    t: dict[str, Any] = {}
    gen_inputs: dict[str, Any] = {}  # generate's optional inputs
    if tasks_uri is not None:
        t["tasks"] = dsl.importer(artifact_uri=tasks_uri, artifact_class=Dataset, reimport=False)
        gen_inputs["tasks"] = t["tasks"].output
    if params.s3.bucket:  # finished units also go to S3: a retried step starts on a fresh disk (no secret in it)
        gen_inputs["units_s3_json"] = params.s3.model_dump_json()
    if shards > 1:
        with dsl.ParallelFor(list(range(shards)), parallelism=k8s.generate_parallelism or None) as shard:
            one = apply(generate_shard(params_json=p["generate"], shard=shard, **gen_inputs), "generate", k8s)
        gathered = generate_gather(params_json=p["generate"], shards=dsl.Collected(one.outputs["trajectories"]))
        t["generate"] = apply(gathered, "gather", k8s)
    else:
        t["generate"] = apply(generate(params_json=p["generate"], **gen_inputs), "generate", k8s)
    trajectories = t["generate"].outputs["trajectories"]
    t["filter"] = apply(filter_(params_json=p["filter"], trajectories=trajectories), "filter", k8s)
    t["split"] = apply(split(params_json=p["split"], filtered=t["filter"].outputs["filtered"]), "split", k8s)
    t["validate"] = apply(
        validate(
            params_json=p["validate"],
            trajectories=trajectories,
            sft_data=t["split"].outputs["sft_data"],
            rl_data=t["split"].outputs["rl_data"],
        ),
        "validate",
        k8s,
    )
    return t


def _data_outputs(t: dict[str, Any]) -> dict[str, Any]:
    return {
        "trajectories": t["generate"].outputs["trajectories"],
        "filtered": t["filter"].outputs["filtered"],
        "sft_data": t["split"].outputs["sft_data"],
        "rl_data": t["split"].outputs["rl_data"],
        "validation": t["validate"].outputs["report"],
    }


def _train_steps(params: Params, p: dict[str, Any], sft_data: Any, rl_data: Any, registry: Any,
                 trajectories: Any) -> dict[str, Any]:  # fmt: skip
    """Add sft, rl, evaluate, challenge and (when the challenger beats the champion) promote. `trajectories`: the
    generated dataset whose image store the step samples refer to (the training steps read pixels from it)."""
    k8s = params.kubernetes
    t: dict[str, Any] = {}
    t["sft"] = apply(
        sft(params_json=p["sft"], sft_data=sft_data, trajectories=trajectories, **training_launch(k8s, "sft")),
        "sft",
        k8s,
    )
    checkpoint = t["sft"].outputs["checkpoint"]
    t["rl"] = apply(
        rl(params_json=p["rl"], rl_data=rl_data, sft_checkpoint=checkpoint, trajectories=trajectories,
           **training_launch(k8s, "rl")),
        "rl",
        k8s,
    )  # fmt: skip
    rl_checkpoint = t["rl"].outputs["checkpoint"]
    t["evaluate"] = apply(
        evaluate(params_json=p["evaluate"], sft_checkpoint=checkpoint, rl_checkpoint=rl_checkpoint), "evaluate", k8s
    )
    evaluation = t["evaluate"].outputs["evaluation"]
    gated = _benchmark_steps(params, p, rl_checkpoint, t)
    t["challenge"] = apply(
        challenge(
            params_json=p["promote"], checkpoint=rl_checkpoint, evaluation=evaluation, registry=registry, **gated
        ),
        "challenge",
        k8s,
    )
    beats_champion = t["challenge"].outputs["Output"]
    with dsl.If(beats_champion == True, name="beats-champion"):  # noqa: E712
        t["promote"] = apply(
            promote(
                params_json=p["promote"], checkpoint=rl_checkpoint, evaluation=evaluation, registry=registry, **gated
            ),
            "promote",
            k8s,
        )
    return t


def _benchmark_steps(params: Params, p: dict[str, Any], rl_checkpoint: Any, t: dict[str, Any]) -> dict[str, Any]:
    """One step per public benchmark that params give data for (in parallel with evaluate), each with the
    benchmark step's settings (its GPU editor, the API secret); returns the challenge/promote inputs of the gate
    that params.benchmarks.gate names (none without a gate)."""
    for name in BENCHMARK_NAMES:
        if getattr(params.benchmarks, name).data:
            task = benchmark(params_json=p["benchmark"], benchmark=name, checkpoint=rl_checkpoint)
            t[f"benchmark-{name}"] = apply(task.set_display_name(f"benchmark-{name}"), "benchmark", params.kubernetes)
    gate = params.benchmarks.gate
    if gate is None:
        return {}
    if f"benchmark-{gate.benchmark}" not in t:
        raise ValueError(
            f"benchmarks.gate names {gate.benchmark}, but benchmarks.{gate.benchmark}.data is empty: no step to gate on"
        )
    return {"benchmark_results": t[f"benchmark-{gate.benchmark}"].outputs["results"]}


def _train_outputs(t: dict[str, Any]) -> dict[str, Any]:
    return {
        "sft_checkpoint": t["sft"].outputs["checkpoint"],
        "rl_checkpoint": t["rl"].outputs["checkpoint"],
        "evaluation": t["evaluate"].outputs["evaluation"],
        "metrics": t["evaluate"].outputs["metrics"],
        "summary": t["evaluate"].outputs["summary"],
        "comparison": t["challenge"].outputs["comparison"],
    }


def build_pipelines(params: Params, prepared_tasks: bool = False) -> dict[str, GraphComponent]:
    """The three pipelines with `params`' platform settings and generation shards: {data, train, factory}. With
    `prepared_tasks`, data and factory take `tasks_uri` (prepared tasks for generate) as a run-time argument."""

    def data_steps(p: dict[str, Any], tasks_uri: str) -> dict[str, Any]:
        return _data_steps(params, p, tasks_uri if prepared_tasks else None)

    def tasks_input(func: Any) -> Any:
        """The pipeline function as KFP sees it: without its last parameter, `tasks_uri`, unless the pipelines
        take prepared tasks (KFP reads the inputs from the signature and passes them by position)."""
        if not prepared_tasks:
            sig = inspect.signature(func)
            func.__signature__ = sig.replace(parameters=[v for k, v in sig.parameters.items() if k != "tasks_uri"])
        return func

    @dsl.pipeline(name="editthinker-data", description="Trajectories, filter, step samples, data checks.")
    @tasks_input
    def editthinker_data(
        generate_params: str, filter_params: str, split_params: str, validate_params: str, tasks_uri: str = ""
    ) -> DataOutputs:
        """`tasks_uri`: the prepared tasks generate reads (only when compiled with prepared_tasks)."""
        p = {"generate": generate_params, "filter": filter_params, "split": split_params, "validate": validate_params}
        return DataOutputs(**_data_outputs(data_steps(p, tasks_uri)))

    @dsl.pipeline(name="editthinker-train", description="SFT, RL, evaluation and promotion of a thinker.")
    def editthinker_train(
        sft_params: str,
        rl_params: str,
        evaluate_params: str,
        benchmark_params: str,
        promote_params: str,
        sft_data_uri: str,
        rl_data_uri: str,
        trajectories_uri: str,
        registry: str = "",
    ) -> TrainOutputs:
        """Step samples come from URIs (e.g. a data run's sft_data / rl_data artifacts), their images from the
        image store inside the trajectories artifact at `trajectories_uri` (the one their manifests name);
        `registry` empty means params.promote.registry, as seen from the challenge and promote tasks."""
        sft_data = dsl.importer(artifact_uri=sft_data_uri, artifact_class=Dataset, reimport=False)
        rl_data = dsl.importer(artifact_uri=rl_data_uri, artifact_class=Dataset, reimport=False)
        trajectories = dsl.importer(artifact_uri=trajectories_uri, artifact_class=Dataset, reimport=False)
        p = {
            "sft": sft_params,
            "rl": rl_params,
            "evaluate": evaluate_params,
            "benchmark": benchmark_params,
            "promote": promote_params,
        }
        t = _train_steps(params, p, sft_data.output, rl_data.output, registry, trajectories.output)
        return TrainOutputs(**_train_outputs(t))

    @dsl.pipeline(name="editthinker-factory", description="Data, SFT, RL, evaluation and promotion of a thinker.")
    @tasks_input
    def editthinker_factory(
        generate_params: str,
        filter_params: str,
        split_params: str,
        validate_params: str,
        sft_params: str,
        rl_params: str,
        evaluate_params: str,
        benchmark_params: str,
        promote_params: str,
        registry: str = "",
        tasks_uri: str = "",
    ) -> FactoryOutputs:
        """`registry` empty means params.promote.registry, as seen from the challenge and promote tasks;
        `tasks_uri`: the prepared tasks generate reads (only when compiled with prepared_tasks)."""
        p = {
            "generate": generate_params,
            "filter": filter_params,
            "split": split_params,
            "validate": validate_params,
            "sft": sft_params,
            "rl": rl_params,
            "evaluate": evaluate_params,
            "benchmark": benchmark_params,
            "promote": promote_params,
        }
        d = data_steps(p, tasks_uri)
        t = _train_steps(params, p, d["split"].outputs["sft_data"], d["split"].outputs["rl_data"], registry,
                         d["generate"].outputs["trajectories"])  # fmt: skip
        t["sft"].after(d["validate"])
        return FactoryOutputs(**_data_outputs(d), **_train_outputs(t))

    return {"data": editthinker_data, "train": editthinker_train, "factory": editthinker_factory}


# built with the default (CPU-only) params: importable, compilable, runnable under kfp.local
PIPELINES = build_pipelines(Params())
editthinker_data, editthinker_train, editthinker_factory = (PIPELINES[k] for k in ("data", "train", "factory"))


PIPELINE_STAGES = {
    "data": ("generate", "filter", "split", "validate"),
    "train": ("sft", "rl", "evaluate", "benchmark", "promote"),
    "factory": ("generate", "filter", "split", "validate", "sft", "rl", "evaluate", "benchmark", "promote"),
}


def params_json(params: Params, stage: str) -> str:
    """The `<stage>_params` argument: the sections `stage` reads, with the keys params set (the rest are the
    image's defaults)."""
    return json.dumps(stage_params(params, stage), sort_keys=True)


def pipeline_arguments(
    params: Params, pipeline: str = "factory", registry: str | None = None, data_uris: dict[str, str] | None = None,
    tasks_uri: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The run-time arguments of `pipeline` for `params`: each stage's params, the registry, the data URIs.

    The registry defaults to the registry PVC's mount path when params.kubernetes.registry mounts one, else
    params.promote.registry. The train pipeline needs `data_uris` = {sft_data_uri, rl_data_uri, trajectories_uri}
    (the trajectories hold the image store the step samples refer to). `tasks_uri`: the prepared tasks generate
    reads (data and factory pipelines compiled with prepared_tasks).
    """
    if pipeline not in PIPELINE_STAGES:
        raise ValueError(f"unknown pipeline {pipeline!r}; pipelines: {list(PIPELINE_STAGES)}")
    if tasks_uri is not None and "generate" not in PIPELINE_STAGES[pipeline]:
        raise ValueError(f"the {pipeline} pipeline does not generate: it takes no prepared tasks")
    args: dict[str, Any] = {f"{stage}_params": params_json(params, stage) for stage in PIPELINE_STAGES[pipeline]}
    if pipeline in ("train", "factory"):
        reg = params.kubernetes.registry
        args["registry"] = registry or (reg.mount_path if reg.pvc else params.promote.registry)
    if pipeline == "train":
        uris = data_uris or {}
        needed = ("sft_data_uri", "rl_data_uri", "trajectories_uri")
        missing = sorted(set(needed) - set(uris))
        if missing:
            raise ValueError(f"the train pipeline needs {missing}")
        args.update({k: uris[k] for k in needed})
    if tasks_uri is not None:
        args["tasks_uri"] = tasks_uri
    return args


def compile_pipeline(path: str | Path, pipeline: str = "factory", params: Params | None = None,
                     prepared_tasks: bool = False) -> Path:  # fmt: skip
    """Compile a pipeline (data, train or factory) with `params`' platform settings to KFP IR YAML;
    `prepared_tasks`: generate reads the prepared tasks at the run-time argument `tasks_uri`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    built = params is not None or prepared_tasks
    pipelines = build_pipelines(params or Params(), prepared_tasks) if built else PIPELINES
    compiler.Compiler().compile(pipelines[pipeline], package_path=str(path))
    return path


def compile_all(out_dir: str | Path, params: Params | None = None, prepared_tasks: bool = False) -> dict[str, Path]:
    """Every pipeline into out_dir/editthinker-<name>.yaml."""
    return {
        name: compile_pipeline(Path(out_dir) / f"editthinker-{name}.yaml", name, params, prepared_tasks)
        for name in PIPELINES
    }


def run_local(
    params: Params,
    workdir: Path,
    pipeline: str = "factory",
    registry: str | Path | None = None,
    enable_caching: bool = False,
    data_uris: dict[str, str] | None = None,
    tasks_uri: str | None = None,
) -> dict[str, str]:
    """Run a pipeline under kfp.local (subprocesses, no containers); return its output artifacts' paths.
    `tasks_uri`: a prepared folder generate reads its tasks from (default: the synthetic world).

    The pipeline is built from `params` (its generation fan-out included; kfp.local runs ParallelFor,
    Collected and If, and ignores the platform settings). Task outputs go under workdir/kfp/<run>/<task>/.
    The registry defaults to params.promote.registry, relative to `workdir` when it is a relative path.
    """
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(workdir / "kfp"),
        workspace_root=str(workdir / "kfp-workspace"),
        enable_caching=enable_caching,
    )
    args = pipeline_arguments(params, pipeline, None, data_uris, tasks_uri)
    if "registry" in args:
        args["registry"] = str(workdir / (registry or params.promote.registry))
    with warnings.catch_warnings():
        # the factory image has Python; kfp.local only guesses from the image's name
        warnings.filterwarnings("ignore", message=".*non-Python base image.*", category=RuntimeWarning)
        warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")  # resources
        task = build_pipelines(params, prepared_tasks=tasks_uri is not None)[pipeline](**args)
    return {name: artifact.path for name, artifact in task.outputs.items()}
