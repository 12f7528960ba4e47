"""KFP drivers: the pipelines compile with the right shape and the cluster settings of params, the generation
fan-out gives the run's dataset byte for byte, kfp.local gives the same data as in-process, and the
`editthinker pipeline` commands hand the right package and arguments to the KFP client (a fake one here:
no cluster can run on these machines)."""

from __future__ import annotations

import filecmp
import importlib
import json
import pkgutil
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from kfp import compiler
from kfp.dsl.graph_component import GraphComponent
from typer.testing import CliRunner

import pipelines
import pipelines.cli as pipeline_cli
from components import FACTORY_IMAGE
from editthinker.cli import app as cli_app
from editthinker.config import Params, load_params, parse_params
from editthinker.lineage import hash_path
from editthinker.registry import Registry
from editthinker.stages import generate, sections_of
from editthinker.stages import promote as promote_stage
from eval_summaries import summary
from pipelines.factory import PIPELINE_STAGES, build_pipelines, compile_all, pipeline_arguments

ROOT = Path(__file__).resolve().parents[1]

DATA = ["generate-shard", "generate-gather", "filter", "split", "validate"]
TRAIN = ["sft", "rl", "evaluate", "challenge", "promote"]
EXPECTED = {
    "editthinker-data": DATA,
    "editthinker-train": ["importer", "importer-2", "importer-3", *TRAIN],
    "editthinker-factory": DATA + TRAIN,
}
CHAINS = {"editthinker-data": DATA, "editthinker-train": TRAIN, "editthinker-factory": DATA + TRAIN}
UNCACHED = {"challenge", "promote"}
GPU_STEPS = {"generate-shard": "generate", "sft": "sft", "rl": "rl", "evaluate": "evaluate"}
SECRET_PATTERNS = [
    re.compile(r"AKIA[0-9A-Z]{16}"),  # AWS access key id
    re.compile(r"\bsk-[A-Za-z0-9_-]{16,}"),  # OpenAI-style API key
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"(?i)(password|passwd|secret|api[_-]?key|access[_-]?key|token)\w*\s*[:=]\s*['\"]?[\w/+.-]{8,}"),
]


def all_pipelines() -> dict[str, GraphComponent]:
    found: dict[str, GraphComponent] = {}
    for info in pkgutil.iter_modules(pipelines.__path__):
        module = importlib.import_module(f"pipelines.{info.name}")
        for obj in vars(module).values():
            if isinstance(obj, GraphComponent):
                found[obj.name] = obj
    return found


def flat_tasks(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every task of the pipeline, sub-DAGs (loops, conditions) included, keyed by task name."""
    tasks: dict[str, dict[str, Any]] = {}

    def walk(dag: dict[str, Any]) -> None:
        for name, task in dag.get("tasks", {}).items():
            comp = spec["components"][task["componentRef"]["name"]]
            if "dag" in comp:
                walk(comp["dag"])
            else:
                tasks[name] = task

    walk(spec["root"]["dag"])
    return tasks


def parents(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """For each task inside a sub-DAG, the task (loop or condition) that holds that sub-DAG."""
    found: dict[str, dict[str, Any]] = {}

    def walk(dag: dict[str, Any], holder: dict[str, Any] | None) -> None:
        for name, task in dag.get("tasks", {}).items():
            comp = spec["components"][task["componentRef"]["name"]]
            if holder is not None:
                found[name] = holder
            if "dag" in comp:
                walk(comp["dag"], task)

    walk(spec["root"]["dag"], None)
    return found


def ancestors(spec: dict[str, Any], name: str) -> set[str]:
    """Tasks `name` waits for, directly or through others (a dependency on a sub-DAG covers its tasks)."""
    deps: dict[str, set[str]] = {}

    def walk(dag: dict[str, Any], inherited: set[str]) -> None:
        for tname, task in dag.get("tasks", {}).items():
            comp = spec["components"][task["componentRef"]["name"]]
            mine = inherited | set(task.get("dependentTasks", []))
            if "dag" in comp:
                walk(comp["dag"], mine)
                deps[tname] = mine | set(comp["dag"].get("tasks", {}))
            else:
                deps[tname] = mine

    walk(spec["root"]["dag"], set())
    seen: set[str] = set()
    todo = [name]
    while todo:
        for d in deps.get(todo.pop(), set()) - seen:
            seen.add(d)
            todo.append(d)
    return seen


def load(path: Path) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(text, pipeline spec, kubernetes platform spec's executors) of a compiled package."""
    text = path.read_text()
    docs = list(yaml.safe_load_all(text))
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if len(docs) > 1 else {}
    return text, docs[0], platform


def executor(spec: dict[str, Any], task: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(executor label, container) of a task."""
    label = spec["components"][task["componentRef"]["name"]]["executorLabel"]
    return label, spec["deploymentSpec"]["executors"][label]["container"]


GPU = {
    "accelerator_type": "nvidia.com/gpu",
    "accelerator_count": 1,
    "cpu_request": "4",
    "cpu_limit": "8",
    "memory_request": "16Gi",
    "memory_limit": "32Gi",
    "timeout_s": 21600,
    "retries": 2,
}


def gpu_params() -> Params:
    return parse_params(gpu_params_data())


def gpu_params_data() -> dict[str, Any]:
    """A cluster's params: GPUs on the model steps, a GPU node pool, a model cache, a registry PVC, secrets."""
    k8s = {
        "image": "registry.example.com/editthinker:1.0-cpu",
        "gpu_image": "registry.example.com/editthinker:1.0-cuda",
        "image_pull_policy": "IfNotPresent",
        "steps": {
            "generate": {**GPU, "timeout_s": 7200},
            "sft": {**GPU, "accelerator_count": 2, "memory_limit": "64Gi"},
            "rl": GPU,
            "evaluate": {**GPU, "retries": 1},
            "promote": {"timeout_s": 900},
        },
        "node_selector": {"cloud.google.com/gke-accelerator": "nvidia-l4"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "model_cache": {"pvc": "editthinker-hf-cache", "mount_path": "/cache/hf"},
        "registry": {"pvc": "editthinker-registry", "mount_path": "/registry"},
        "retry_backoff_s": 120,
        "secrets": [
            {"secret_name": "editthinker-api", "env": {"OPENAI_API_KEY": "api-key"}, "steps": ["generate", "evaluate"]},
            {
                "secret_name": "editthinker-s3",
                "env": {"AWS_ACCESS_KEY_ID": "access-key-id", "AWS_SECRET_ACCESS_KEY": "secret-access-key"},
            },
        ],
    }
    # one public benchmark with data, so its step compiles (its data path is only read when the step runs)
    return {"generate": {"shards": 4}, "kubernetes": k8s, "benchmarks": {"gedit": {"data": "/data/gedit"}}}


# --- shape, caching, defaults ------------------------------------------------------------------------------


def test_pipelines_compile_with_the_right_shape(tmp_path: Path) -> None:
    found = all_pipelines()
    assert set(EXPECTED) <= set(found), f"pipelines found: {sorted(found)}"
    for name, pipeline in found.items():
        path = tmp_path / f"{name}.yaml"
        compiler.Compiler().compile(pipeline, package_path=str(path))
        text, spec, _ = load(path)
        tasks = flat_tasks(spec)
        if name in EXPECTED:
            assert sorted(tasks) == sorted(EXPECTED[name])
            chain = CHAINS[name]
            for before, after in zip(chain, chain[1:], strict=False):
                assert before in ancestors(spec, after), f"{name}: {after} does not wait for {before}"
        for tname, task in tasks.items():
            if tname.startswith("importer"):
                continue
            cached = task.get("cachingOptions", {}).get("enableCache", False)
            assert cached is (tname not in UNCACHED), f"{name}: caching of {tname} is {cached}"
        # params come at run time only: no default is compiled in, and nothing secret-looking is
        for stage in PIPELINE_STAGES.get(name.removeprefix("editthinker-"), ()):
            assert "defaultValue" not in spec["root"]["inputDefinitions"]["parameters"][f"{stage}_params"]
        for pattern in SECRET_PATTERNS:
            assert not pattern.search(text), f"{name}: secret-looking text {pattern.search(text)[0]!r}"
        for ex in spec["deploymentSpec"]["executors"].values():
            if "container" in ex:
                assert ex["container"]["image"] == FACTORY_IMAGE == Params().kubernetes.image
                assert "env" not in ex["container"]
                assert "accelerator" not in ex["container"].get("resources", {})  # the default is CPU-only
                assert not any("pip install" in part for part in ex["container"]["command"])


STEP_STAGE = {"generate-shard": "generate", "generate-gather": "generate", "challenge": "promote"}


def stage_of_task(name: str) -> str:
    """The stage (or step) whose params a compiled task receives: benchmark, benchmark-2, ... are benchmark steps."""
    return "benchmark" if re.fullmatch(r"benchmark(-\d+)?", name) else STEP_STAGE.get(name, name)


def test_each_step_receives_only_the_params_of_its_stage(tmp_path: Path) -> None:
    """Every task's params_json is its stage's own run-time argument (`<stage>_params`), so a change to a
    section the stage does not read leaves that step's cache key alone."""
    path = compile_all(tmp_path, gpu_params())["factory"]
    _, spec, _ = load(path)
    for name, task in flat_tasks(spec).items():
        if name.startswith("importer"):
            continue
        stage = stage_of_task(name)
        source = task["inputs"]["parameters"]["params_json"]["componentInputParameter"]
        assert source.removeprefix("pipelinechannel--") == f"{stage}_params", (name, source)
    args = pipeline_arguments(gpu_params(), "factory")
    assert "kubernetes" not in json.loads(args["sft_params"])  # platform settings are compiled in, never passed
    for stage in PIPELINE_STAGES["factory"]:
        assert set(json.loads(args[f"{stage}_params"])) <= set(sections_of(stage)), stage


def test_generation_fans_out_over_the_shards_and_promotion_waits_for_the_challenge(tmp_path: Path) -> None:
    pipes = build_pipelines(parse_params({"generate": {"shards": 3}, "kubernetes": {"generate_parallelism": 2}}))
    compiler.Compiler().compile(pipes["factory"], package_path=str(tmp_path / "f.yaml"))
    _, spec, _ = load(tmp_path / "f.yaml")
    holders = parents(spec)
    loop = holders["generate-shard"]
    assert json.loads(loop["parameterIterator"]["items"]["raw"]) == [0, 1, 2]
    assert loop["iteratorPolicy"]["parallelismLimit"] == 2
    assert "generate-gather" not in holders  # gathered outside the loop, after all of it
    condition = holders["promote"]
    assert condition["taskInfo"]["name"] == "beats-champion"
    assert "challenge" in condition["triggerPolicy"]["condition"]
    assert condition["triggerPolicy"]["condition"].endswith("== true")
    # one shard: no loop at all, the plain generate step (what `generate.run` does)
    one = build_pipelines(parse_params({"generate": {"shards": 1}}))
    compiler.Compiler().compile(one["data"], package_path=str(tmp_path / "d.yaml"))
    _, spec1, _ = load(tmp_path / "d.yaml")
    assert sorted(flat_tasks(spec1)) == sorted(["generate", "filter", "split", "validate"])


# --- cluster settings from params -----------------------------------------------------------------------------


def test_gpu_params_compile_into_resources_and_platform_spec(tmp_path: Path) -> None:
    params = gpu_params()
    k8s = params.kubernetes
    paths = compile_all(tmp_path, params)
    assert sorted(paths) == ["data", "factory", "train"]
    seen_steps: set[str] = set()
    for name, path in paths.items():
        text, spec, platform = load(path)
        tasks = flat_tasks(spec)
        for tname, task in tasks.items():
            if tname.startswith("importer"):
                continue
            step = {"generate-shard": "generate", "generate-gather": "gather"}.get(tname, tname)
            seen_steps.add(step)
            want = k8s.steps[step]
            label, container = executor(spec, task)
            res = container.get("resources", {})
            plat = platform[label]
            if tname in GPU_STEPS:
                assert container["image"] == "registry.example.com/editthinker:1.0-cuda", tname
                assert res["accelerator"]["resourceType"] == "nvidia.com/gpu", tname
                assert res["accelerator"]["resourceCount"] == str(want.accelerator_count), tname
                assert plat["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
                assert plat["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
                mounts = {m["mountPath"]: m["pvcNameParameter"]["runtimeValue"]["constant"] for m in plat["pvcMount"]}
                assert mounts == {"/cache/hf": "editthinker-hf-cache"}, tname
                assert {"name": "HF_HOME", "value": "/cache/hf"} in container["env"]
                # the expert/judge answers live on the model-cache PVC too, not in the pod
                answers = {"name": "EDITTHINKER_ANSWER_CACHE", "value": "/cache/hf/editthinker-answers"}
                assert answers in container["env"], tname
            else:
                assert container["image"] == "registry.example.com/editthinker:1.0-cpu", tname
                assert "accelerator" not in res and "nodeSelector" not in plat and "tolerations" not in plat, tname
            assert res.get("resourceCpuRequest") == (want.cpu_request or None), tname
            assert res.get("resourceCpuLimit") == (want.cpu_limit or None), tname
            assert res.get("resourceMemoryRequest") == (want.memory_request or None), tname
            assert res.get("resourceMemoryLimit") == (want.memory_limit or None), tname
            assert plat["activeDeadlineSeconds"] == str(want.timeout_s), tname
            assert plat["imagePullPolicy"] == "IfNotPresent"
            retry = task.get("retryPolicy", {})
            assert retry.get("maxRetryCount", 0) == want.retries, tname
            if want.retries:
                assert retry["backoffDuration"] == "120s"
            cached = task.get("cachingOptions", {}).get("enableCache", False)
            assert cached is (tname not in UNCACHED), f"{name}: caching of {tname}"
            if tname in ("challenge", "promote"):
                mounts = {m["mountPath"]: m["pvcNameParameter"]["runtimeValue"]["constant"] for m in plat["pvcMount"]}
                assert mounts == {"/registry": "editthinker-registry"}
            # secrets by name, as env: the S3 one everywhere, the API one on generate and evaluate only
            secrets = {
                (s["secretName"], e["envVar"], e["secretKey"])
                for s in plat.get("secretAsEnv", [])
                for e in s["keyToEnv"]
            }
            expected = {
                ("editthinker-s3", "AWS_ACCESS_KEY_ID", "access-key-id"),
                ("editthinker-s3", "AWS_SECRET_ACCESS_KEY", "secret-access-key"),
            }
            if step in ("generate", "evaluate"):
                expected.add(("editthinker-api", "OPENAI_API_KEY", "api-key"))
            assert secrets == expected, tname
        for pattern in SECRET_PATTERNS[:3]:  # the last one would flag `secretKey: <name>`: names are the point
            assert not pattern.search(text), f"{name}: secret-looking text {pattern.search(text)[0]!r}"
    assert seen_steps == set(k8s.steps)  # every configured step is a task of some pipeline


def test_no_secret_value_reaches_the_compiled_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The secrets' values live only in the environment (here) or the cluster: compile with the variables set
    and check that no value, only the names, is in any package or in the run arguments."""
    values = {
        "OPENAI_API_KEY": "sk-fakeValueForTheScan0123456789abcdef",
        "AWS_ACCESS_KEY_ID": "AKIAFAKEFAKEFAKEFAKE",
        "AWS_SECRET_ACCESS_KEY": "fake/Secret+Access+Key/0123456789abcdefghij",
    }
    for var, value in values.items():
        monkeypatch.setenv(var, value)
    params = gpu_params()
    texts = [p.read_text() for p in compile_all(tmp_path, params).values()]
    texts.append(json.dumps(pipeline_arguments(params, "factory")))
    for text in texts:
        for value in values.values():
            assert value not in text
        assert "editthinker-api" in text or text.startswith("{")  # the names are there (the packages)
    assert all(var in texts[0] for var in values if var != "OPENAI_API_KEY")


def test_training_steps_run_under_accelerate_launch_over_their_gpus(tmp_path: Path) -> None:
    """accelerator_count > 1 compiles into the step's launch inputs: that many processes under `accelerate
    launch` with the image's configs/accelerate/<accelerate_config>.yaml (what editthinker.launch runs)."""
    from components import IMAGE_CONFIGS

    data = gpu_params_data()
    data["kubernetes"]["steps"]["rl"] = {**GPU, "accelerator_count": 4, "accelerate_config": "fsdp"}
    _, spec, _ = load(compile_all(tmp_path, parse_params(data))["factory"])
    tasks = flat_tasks(spec)

    def launch(task: str) -> dict[str, Any]:
        given = tasks[task]["inputs"]["parameters"]
        return {k: given[k]["runtimeValue"]["constant"] for k in ("num_processes", "accelerate_config")}

    assert launch("sft") == {"num_processes": 2, "accelerate_config": f"{IMAGE_CONFIGS}/accelerate/zero3.yaml"}
    assert launch("rl") == {"num_processes": 4, "accelerate_config": f"{IMAGE_CONFIGS}/accelerate/fsdp.yaml"}
    # one GPU, or none: the stage in the step's own process
    _, spec1, _ = load(compile_all(tmp_path / "one", gpu_params())["train"])
    given = flat_tasks(spec1)["rl"]["inputs"]["parameters"]
    assert given["num_processes"]["runtimeValue"]["constant"] == 1
    assert given["accelerate_config"]["runtimeValue"]["constant"] == ""
    # the images carry configs/ where the steps look for it, and both configs exist
    for dockerfile in ("Dockerfile.cpu", "Dockerfile.cuda"):
        lines = (ROOT / "docker" / dockerfile).read_text().splitlines()
        workdir = [line for line in lines if line.startswith("WORKDIR ")]
        assert f"WORKDIR {IMAGE_CONFIGS.removesuffix('/configs')}" in workdir, dockerfile
        assert "COPY configs ./configs" in lines, dockerfile
    for name in ("zero3", "fsdp"):
        assert (ROOT / "configs" / "accelerate" / f"{name}.yaml").is_file()


def test_evaluation_and_training_show_in_the_kfp_ui(tmp_path: Path) -> None:
    """evaluate writes Metrics and the summary table as Markdown; sft and rl write their final Metrics and
    their DVCLive curves; the pipelines hand the metrics and the summary on as outputs."""
    path = compile_all(tmp_path, Params())["factory"]
    _, spec, _ = load(path)
    tasks = flat_tasks(spec)

    def outputs(task: str) -> dict[str, str]:
        comp = spec["components"][tasks[task]["componentRef"]["name"]]
        return {k: v["artifactType"]["schemaTitle"] for k, v in comp["outputDefinitions"]["artifacts"].items()}

    assert outputs("evaluate") == {"evaluation": "system.Artifact", "metrics": "system.Metrics",
                                   "summary": "system.Markdown"}  # fmt: skip
    for step in ("sft", "rl"):
        assert outputs(step) == {"checkpoint": "system.Model", "metrics": "system.Metrics",
                                 "training_log": "system.Artifact"}  # fmt: skip
    pipeline_outputs = spec["root"]["outputDefinitions"]["artifacts"]
    assert pipeline_outputs["summary"]["artifactType"]["schemaTitle"] == "system.Markdown"
    assert pipeline_outputs["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"


def test_kubernetes_params_are_validated() -> None:
    with pytest.raises(ValueError, match=r"kubernetes\.steps\.sft.*accelerator_type"):
        parse_params({"kubernetes": {"steps": {"sft": {"accelerator_count": 1}}}})
    with pytest.raises(ValueError, match=r"unknown steps \['sfx'\]"):
        parse_params({"kubernetes": {"steps": {"sfx": {"retries": 1}}}})
    with pytest.raises(ValueError, match=r"kubernetes\.steps\.rl\.memory_limit"):
        parse_params({"kubernetes": {"steps": {"rl": {"memory_limit": "4GB"}}}})
    with pytest.raises(ValueError, match=r"kubernetes\.secrets\.0\.env"):
        parse_params({"kubernetes": {"secrets": [{"secret_name": "s", "env": {"1BAD": "k"}}]}})
    with pytest.raises(ValueError, match=r"kubernetes\.secrets\.0\.value: unknown key"):
        parse_params({"kubernetes": {"secrets": [{"secret_name": "s", "env": {"A": "k"}, "value": "x"}]}})
    # a step given in params is merged over its defaults, key by key
    p = parse_params({"kubernetes": {"steps": {"sft": {"accelerator_type": "nvidia.com/gpu", "accelerator_count": 1}}}})
    assert p.kubernetes.steps["sft"].memory_request == Params().kubernetes.steps["sft"].memory_request
    assert load_params(ROOT / "params.yaml").kubernetes == Params().kubernetes  # shipped = CPU-only defaults


# --- the generation fan-out -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("num_tasks", "shards"), [(13, 3), (12, 2), (5, 1), (3, 4)])
def test_generate_shards_gathered_equal_run_byte_for_byte(tmp_path: Path, num_tasks: int, shards: int) -> None:
    params = parse_params({"generate": {"num_tasks": num_tasks, "shards": shards}})
    direct = generate.run(params, tmp_path / "direct")
    dirs = [tmp_path / f"shard-{k}" for k in range(shards)]
    covered: list[int] = []
    for k in reversed(range(shards)):  # any order
        generate.run_shard(params, k, dirs[k])
        covered.extend(generate.shard_tasks(params, k))
    assert sorted(covered) == list(range(num_tasks))
    gathered = generate.gather(params, dirs[::-1], tmp_path / "gathered")
    assert gathered == direct  # same manifest: rows, files, dataset_sha256, lineage
    # every file, the image store's (images/) included, is byte-identical
    names = sorted(str(p.relative_to(tmp_path / "direct")) for p in (tmp_path / "direct").rglob("*") if p.is_file())
    assert "images/manifest.json" in names
    assert names == sorted(
        str(p.relative_to(tmp_path / "gathered")) for p in (tmp_path / "gathered").rglob("*") if p.is_file()
    )
    match, mismatch, errors = filecmp.cmpfiles(tmp_path / "direct", tmp_path / "gathered", names, shallow=False)
    assert match == names and not mismatch and not errors


def test_gather_refuses_missing_duplicate_or_foreign_shards(tmp_path: Path) -> None:
    params = parse_params({"generate": {"num_tasks": 6, "shards": 2}})
    a, b = tmp_path / "a", tmp_path / "b"
    generate.run_shard(params, 0, a)
    generate.run_shard(params, 1, b)
    with pytest.raises(ValueError, match=r"shards \[1\] of 2 are missing"):
        generate.gather(params, [a], tmp_path / "out")
    with pytest.raises(ValueError, match="shard 0 given twice"):
        generate.gather(params, [a, a, b], tmp_path / "out")
    other = parse_params({"generate": {"num_tasks": 6, "shards": 2, "seed": 99}})
    with pytest.raises(ValueError, match="other params"):
        generate.gather(other, [a, b], tmp_path / "out")
    with pytest.raises(ValueError, match="outside 0..1"):
        generate.run_shard(params, 2, tmp_path / "c")
    assert not (tmp_path / "out").exists()


# --- the promotion gate ---------------------------------------------------------------------------------------


def test_challenge_reads_the_registry_and_writes_nothing(tmp_path: Path) -> None:
    params = parse_params({})
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model.bin").write_bytes(b"weights")
    ev = tmp_path / "eval"
    ev.mkdir()

    def summary_of(checkpoint: Path) -> None:  # the evaluation names the checkpoint it scored
        lineage = {"inputs": {"rl_checkpoint": hash_path(checkpoint)}}
        (ev / "summary.json").write_text(json.dumps(summary(6.0, lineage)))

    summary_of(ckpt)
    reg = tmp_path / "registry"
    first = promote_stage.challenge(params, ckpt, ev, reg)
    assert first["beats_champion"] is True and first["champion"] is None
    assert not reg.exists()  # read only
    promote_stage.run(params, ckpt, ev, reg)
    again = promote_stage.challenge(params, ckpt, ev, reg)
    assert again["beats_champion"] is False and "already the champion" in again["reason"]
    (ckpt / "model.bin").write_bytes(b"other weights")  # a new challenger, no better
    summary_of(ckpt)
    worse = promote_stage.challenge(params, ckpt, ev, reg)
    assert worse["beats_champion"] is False and worse["champion"] == Registry(reg).champion()


# --- the `editthinker pipeline` commands ----------------------------------------------------------------------


class FakeClient:
    """Records what the commands hand to kfp.Client (reading the package while it exists)."""

    def __init__(self, host: str, namespace: str | None, auth: pipeline_cli.Auth) -> None:
        self.host, self.namespace, self.auth = host, namespace, auth
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.texts: list[str] = []
        FakeClient.last = self

    def _package(self, path: str) -> dict[str, Any]:
        self.texts.append(Path(path).read_text())
        return yaml.safe_load(self.texts[-1].split("\n---\n")[0])

    def create_run_from_pipeline_package(self, **kw: Any) -> Any:
        self.calls.append(("run", {**kw, "package": self._package(kw["pipeline_file"])}))
        return type("Run", (), {"run_id": "run-123"})()

    def create_experiment(self, name: str, namespace: str | None = None) -> Any:
        self.calls.append(("experiment", {"name": name, "namespace": namespace}))
        return type("Experiment", (), {"experiment_id": "exp-9"})()

    def create_recurring_run(self, **kw: Any) -> Any:
        self.calls.append(("recurring", {**kw, "package": self._package(kw["pipeline_package_path"])}))
        return type("Job", (), {"recurring_run_id": "job-7"})()


@pytest.fixture
def fake_client(monkeypatch: pytest.MonkeyPatch) -> type[FakeClient]:
    monkeypatch.setattr(pipeline_cli, "client_factory", FakeClient)
    return FakeClient


def write_params(tmp_path: Path) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(gpu_params_data()))
    return path


def test_pipeline_compile_command_writes_the_three_packages(tmp_path: Path) -> None:
    params_file = write_params(tmp_path)
    result = CliRunner().invoke(cli_app, ["pipeline", "compile", "--params", str(params_file), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    for name in ("data", "train", "factory"):
        _, spec, platform = load(tmp_path / f"editthinker-{name}.yaml")
        assert spec["pipelineInfo"]["name"] == f"editthinker-{name}"
        assert any("secretAsEnv" in p for p in platform.values())


def test_pipeline_submit_hands_package_arguments_and_run_name_to_the_client(
    tmp_path: Path, fake_client: type[FakeClient]
) -> None:
    params = gpu_params()
    params_file = write_params(tmp_path)
    args = ["pipeline", "submit", "--host", "http://kfp.example:8080", "--params", str(params_file)]
    result = CliRunner().invoke(cli_app, [*args, "--experiment", "nightly"])
    assert result.exit_code == 0, result.output
    client = fake_client.last
    assert client.host == "http://kfp.example:8080" and client.namespace is None
    [(kind, call)] = client.calls
    assert kind == "run"
    assert call["run_name"] == f"editthinker-factory-{params.section_hash()[:12]}"
    assert call["run_name"] in result.output and "run-123" in result.output
    assert call["experiment_name"] == "nightly"
    assert call["enable_caching"] is None  # each task's own caching option stands
    stages = PIPELINE_STAGES["factory"]
    assert call["arguments"] == {
        **{f"{s}_params": pipelines.factory.params_json(params, s) for s in stages},
        "registry": "/registry",
    }
    for s in stages:  # each step's params give its stage the same sections, so the same lineage hash
        sent = parse_params(json.loads(call["arguments"][f"{s}_params"]))
        assert sent.section_hash(*sections_of(s)) == params.section_hash(*sections_of(s))
    assert call["package"]["pipelineInfo"]["name"] == "editthinker-factory"
    assert "generate-shard" in flat_tasks(call["package"])

    result = CliRunner().invoke(cli_app, [*args, "--pipeline", "data", "--no-cache"])
    assert result.exit_code == 0, result.output
    [(_, call)] = fake_client.last.calls
    assert call["package"]["pipelineInfo"]["name"] == "editthinker-data"
    assert set(call["arguments"]) == {f"{s}_params" for s in PIPELINE_STAGES["data"]}
    assert call["enable_caching"] is False
    assert call["run_name"] == f"editthinker-data-{params.section_hash()[:12]}"

    result = CliRunner().invoke(cli_app, [*args, "--pipeline", "train"])
    assert result.exit_code != 0 and "sft_data_uri" in result.output  # train needs its data
    uris = ["--sft-data", "s3://bucket/runs/1/sft_data", "--rl-data", "s3://bucket/runs/1/rl_data"]
    result = CliRunner().invoke(cli_app, [*args, "--pipeline", "train", *uris])
    assert result.exit_code != 0 and "trajectories_uri" in result.output  # and the image store's dataset
    uris += ["--trajectories", "s3://bucket/runs/1/trajectories"]
    result = CliRunner().invoke(cli_app, [*args, "--pipeline", "train", *uris])
    assert result.exit_code == 0, result.output
    [(_, call)] = fake_client.last.calls
    assert call["arguments"]["trajectories_uri"] == "s3://bucket/runs/1/trajectories"
    assert call["arguments"]["sft_data_uri"] == "s3://bucket/runs/1/sft_data"
    assert call["arguments"]["rl_data_uri"] == "s3://bucket/runs/1/rl_data"


def test_pipeline_schedule_creates_a_recurring_run(tmp_path: Path, fake_client: type[FakeClient]) -> None:
    params = gpu_params()
    params_file = write_params(tmp_path)
    base = ["pipeline", "schedule", "--host", "http://kfp:8080", "--params", str(params_file)]
    result = CliRunner().invoke(cli_app, [*base, "--cron", "0 3 * * *", "--namespace", "team-a"])
    assert result.exit_code == 0, result.output
    client = fake_client.last
    assert client.namespace == "team-a"
    assert [k for k, _ in client.calls] == ["experiment", "recurring"]
    assert client.calls[0][1] == {"name": "editthinker", "namespace": "team-a"}
    call = client.calls[1][1]
    assert call["experiment_id"] == "exp-9"
    assert call["cron_expression"] == "0 0 3 * * *"  # KFP's 6 fields, seconds first
    assert call["job_name"] == f"editthinker-factory-{params.section_hash()[:12]}"
    assert call["max_concurrency"] == 1 and call["no_catchup"] is True and call["enable_caching"] is None
    assert call["params"]["sft_params"] == pipelines.factory.params_json(params, "sft")
    assert call["package"]["pipelineInfo"]["name"] == "editthinker-factory"
    bad = CliRunner().invoke(cli_app, [*base, "--cron", "every night"])
    assert bad.exit_code != 0 and "cron" in bad.output


TOKEN = "kfp-bearer-9f2c41d7e0b3a6c58d1e"


def plain(output: str) -> str:
    """CLI output without rich's error box and line wrapping."""
    return " ".join(output.replace("│", " ").split())


def test_submit_and_schedule_authenticate_with_a_token_from_the_environment_only(
    tmp_path: Path, fake_client: type[FakeClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The token comes from $KFP_TOKEN (or the variable --token-env names) and reaches the client; it never
    shows in the output, the compiled package or the run arguments."""
    params_file = write_params(tmp_path)
    submit = ["pipeline", "submit", "--host", "https://kfp.example", "--params", str(params_file)]
    schedule = ["pipeline", "schedule", *submit[2:], "--cron", "0 3 * * *"]
    monkeypatch.delenv("KFP_TOKEN", raising=False)
    result = CliRunner().invoke(cli_app, submit)
    assert result.exit_code == 0, result.output
    assert fake_client.last.auth == pipeline_cli.Auth()  # no token anywhere: anonymous, as before

    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    for command in (submit, schedule):
        result = CliRunner().invoke(cli_app, command)
        assert result.exit_code == 0, result.output
        client = fake_client.last
        assert client.auth.token == TOKEN and client.auth.token_file is None
        assert "$KFP_TOKEN" in plain(result.output)
        assert TOKEN not in "".join(plain(result.output).split())  # not even wrapped over two lines
        assert client.texts and not any(TOKEN in text for text in client.texts)
        assert TOKEN not in json.dumps([call for _, call in client.calls], default=str)
        assert TOKEN not in repr(client.auth)

    monkeypatch.setenv("TEAM_KFP_TOKEN", TOKEN + "-team")
    result = CliRunner().invoke(cli_app, [*submit, "--token-env", "TEAM_KFP_TOKEN"])
    assert result.exit_code == 0, result.output
    assert fake_client.last.auth.token == TOKEN + "-team"
    result = CliRunner().invoke(cli_app, [*submit, "--token-env", "NO_SUCH_TOKEN_VAR"])
    assert result.exit_code != 0 and "NO_SUCH_TOKEN_VAR is not set" in plain(result.output)


def test_submit_reads_a_token_file_on_every_request(
    tmp_path: Path, fake_client: type[FakeClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    params_file = write_params(tmp_path)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    monkeypatch.setenv("KFP_TOKEN", "ignored-when-a-file-is-given")
    args = ["pipeline", "submit", "--host", "https://kfp.example", "--params", str(params_file)]
    result = CliRunner().invoke(cli_app, [*args, "--token-file", str(token_file)])
    assert result.exit_code == 0, result.output
    assert fake_client.last.auth.token_file == token_file and fake_client.last.auth.token is None
    assert TOKEN not in "".join(plain(result.output).split())
    assert not any(TOKEN in t for t in fake_client.last.texts)
    missing = CliRunner().invoke(cli_app, [*args, "--token-file", str(tmp_path / "none")])
    assert missing.exit_code != 0 and "no such file" in plain(missing.output)
    both = CliRunner().invoke(cli_app, [*args, "--token-file", str(token_file), "--token-env", "KFP_TOKEN"])
    assert both.exit_code != 0 and "not both" in plain(both.output)


def test_client_factory_hands_the_credentials_to_kfp_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real factory: a token as kfp.Client's existing_token, a token file as its credentials (KFP's
    ServiceAccountTokenVolumeCredentials, which reads the file on every request)."""
    import kfp
    from kfp.client import ServiceAccountTokenVolumeCredentials

    made: list[dict[str, Any]] = []
    monkeypatch.setattr(kfp, "Client", lambda **kw: made.append(kw))
    pipeline_cli.client_factory("https://kfp.example", None, pipeline_cli.Auth(token=TOKEN, source="$KFP_TOKEN"))
    assert made[-1] == {"host": "https://kfp.example", "existing_token": TOKEN}
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    pipeline_cli.client_factory("https://kfp.example", "team-a", pipeline_cli.Auth(token_file=token_file))
    creds = made[-1].pop("credentials")
    assert made[-1] == {"host": "https://kfp.example", "namespace": "team-a"}
    assert isinstance(creds, ServiceAccountTokenVolumeCredentials)
    assert creds._get_token() == TOKEN  # read from the file (kfp strips it), when a request needs it
    pipeline_cli.client_factory("http://kfp:8080", None, pipeline_cli.Auth())
    assert made[-1] == {"host": "http://kfp:8080"}


def test_submit_warns_when_api_answers_would_be_cached_in_the_pod(
    tmp_path: Path, fake_client: type[FakeClient]
) -> None:
    api = {"kind": "openai", "model": "m", "base_url": "http://vllm:8000/v1"}
    params_file = tmp_path / "api.yaml"
    params_file.write_text(yaml.safe_dump({"generate": {"shards": 1}, "judge": api}))
    args = ["pipeline", "submit", "--host", "http://kfp:8080", "--params", str(params_file), "--registry", "/r"]
    result = CliRunner().invoke(cli_app, args)
    assert result.exit_code == 0, result.output
    assert "no model cache PVC" in plain(result.output) and "judge answer cache" in plain(result.output)
    with_pvc = tmp_path / "api-pvc.yaml"
    with_pvc.write_text(yaml.safe_dump({"generate": {"shards": 1}, "judge": api,
                                        "kubernetes": {"model_cache": {"pvc": "hf-cache"}}}))  # fmt: skip
    result = CliRunner().invoke(cli_app, [*args[:-4], "--params", str(with_pvc), "--registry", "/r"])
    assert result.exit_code == 0, result.output
    assert "no model cache PVC" not in result.output


def test_the_stage_cli_does_not_import_kfp() -> None:
    code = "import sys, editthinker.cli; assert 'kfp' not in sys.modules and 'pipelines' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT / "src")


# --- kfp.local -----------------------------------------------------------------------------------------------


def tiny_params() -> dict[str, Any]:
    return {
        "generate": {"num_tasks": 12, "shards": 2},
        "evaluate": {"num_tasks": 4},
        "sft": {"max_steps": 2, "batch_size": 2},
        "rl": {"max_steps": 1, "batch_size": 2, "num_generations": 2, "select": {"num_tasks": 3, "max_turns": 2}},
    }


@pytest.mark.slow
def test_kfp_local_data_pipeline_matches_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The data pipeline under kfp.local, its generation fanned out over 2 shards (ParallelFor + Collected run
    under kfp.local 2.17), gives the datasets of the direct stage calls."""
    from editthinker.stages import filter as filter_stage
    from editthinker.stages import split
    from pipelines.factory import run_local

    params = parse_params(tiny_params())

    out = run_local(params, tmp_path / "kfp", pipeline="data")

    local = tmp_path / "in-process"
    generate.run(params, local / "trajectories")
    filter_stage.run(params, local / "trajectories", local / "filtered")
    split.run(params, local / "filtered", local / "sft", local / "rl")
    expected = {"trajectories": "trajectories", "filtered": "filtered", "sft_data": "sft", "rl_data": "rl"}
    for output, name in expected.items():
        via_kfp = json.loads((Path(out[output]) / "manifest.json").read_text())
        direct = json.loads((local / name / "manifest.json").read_text())
        assert via_kfp["dataset_sha256"] == direct["dataset_sha256"], output
        assert via_kfp["rows"] == direct["rows"], output
    assert json.loads((local / "sft" / "manifest.json").read_text())["rows"] > 0
    report = json.loads((Path(out["validation"]) / "report.json").read_text())
    assert report["success"] is True


@pytest.mark.slow
def test_kfp_local_data_pipeline_generates_from_prepared_tasks(tmp_path: Path) -> None:
    """The data pipeline compiled with prepared tasks, under kfp.local with `tasks_uri` a prepared folder: each
    generation shard reads it, and the gathered trajectories are those of `generate --tasks` run in process."""
    from editthinker import prepare
    from pipelines.factory import run_local

    params = parse_params({"sources": [{"name": "world", "kind": "synthetic", "num_tasks": 6}],
                           "generate": {"num_tasks": 6, "max_turns": 2, "shards": 2, "unit_tasks": 2}})  # fmt: skip
    prepare.run(params, tmp_path / "prepared")
    out = run_local(params, tmp_path / "kfp", pipeline="data", tasks_uri=str(tmp_path / "prepared"))
    direct = generate.run(params, tmp_path / "direct", tasks=tmp_path / "prepared")
    via_kfp = json.loads((Path(out["trajectories"]) / "manifest.json").read_text())
    assert via_kfp["dataset_sha256"] == direct["dataset_sha256"] and via_kfp["rows"] == direct["rows"] > 0
    assert via_kfp["lineage"] == direct["lineage"]  # the prepared tasks are named in the lineage


@pytest.mark.slow
def test_kfp_local_factory_promotes_only_when_the_challenger_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole factory under kfp.local twice on one registry, caching on. The first run's challenge decides by
    the paired rule (a tiny thinker on 4 items may or may not beat the editor alone): promote runs under the
    dsl.If exactly when it wins. The second run takes data, training and evaluation from the cache, runs
    challenge again (never cached), which cannot win again (already champion, or the same refused checkpoint),
    so promote is skipped and the registry's decision log is unchanged."""
    from pipelines.factory import run_local

    data = tiny_params()
    data["evaluate"] = {"num_tasks": 2, "max_turns": 2}
    data["thinker"] = {"max_new_tokens": 24}
    params = parse_params(data)
    registry = tmp_path / "registry"

    first = run_local(params, tmp_path / "run", registry=registry, enable_caching=True)
    won = json.loads(Path(first["comparison"]).read_text())["beats_champion"]
    summary = json.loads((Path(first["evaluation"]) / "summary.json").read_text())
    assert Path(first["summary"]).read_text() == (Path(first["evaluation"]) / "summary.md").read_text()
    logged = json.loads(Path(first["metrics"]).read_text())  # what the step logged as KFP metrics
    assert logged["challenger_overall"] == summary["challenger"]["overall"]
    assert logged["editor.success_rate"] == summary["systems"]["editor"]["all"]["success_rate"]
    reg = Registry(registry)
    logged_decisions = len(reg.decisions()) if registry.exists() else 0
    assert (reg.champion() is not None) is won if registry.exists() else not won
    assert logged_decisions == (1 if won else 0)  # promote ran exactly when the challenger won

    second = run_local(params, tmp_path / "run", registry=registry, enable_caching=True)
    for cached in ("trajectories", "sft_data", "rl_checkpoint", "evaluation"):
        assert second[cached] == first[cached], cached  # a cache hit hands back the first run's artifact
    assert second["comparison"] != first["comparison"]  # challenge ran again
    comparison = json.loads(Path(second["comparison"]).read_text())
    assert comparison["beats_champion"] is False
    assert ("already the champion" in comparison["reason"]) is won
    assert (len(Registry(registry).decisions()) if registry.exists() else 0) == logged_decisions  # no promote


def test_submit_without_a_registry_volume_warns(tmp_path: Path, fake_client: type[FakeClient]) -> None:
    params_file = tmp_path / "cpu.yaml"
    params_file.write_text("generate: {shards: 1}\n")
    args = ["pipeline", "submit", "--host", "http://kfp:8080", "--params", str(params_file)]
    result = CliRunner().invoke(cli_app, args)
    assert result.exit_code == 0, result.output
    assert "no registry PVC" in result.output
    [(_, call)] = fake_client.last.calls
    assert call["arguments"]["registry"] == "registry"  # params.promote.registry
    assert "generate" in flat_tasks(call["package"])  # one shard: no fan-out


def test_benchmark_steps_run_beside_evaluate_and_feed_the_gate(tmp_path: Path) -> None:
    """A step per benchmark with data (parallel to evaluate, after rl); with benchmarks.gate, challenge and
    promote read the gated benchmark's results; a gate on a benchmark without data is refused at compile time."""
    data = {"gedit": {"data": "/data/gedit"}, "kris": {"data": "/data/kris"}}
    gate = {"benchmark": "gedit", "metric": "overall", "margin": 0.1}
    _, spec, _ = load(compile_all(tmp_path, parse_params({"benchmarks": {**data, "gate": gate}}))["train"])
    tasks = flat_tasks(spec)
    bench_tasks = sorted(t for t in tasks if stage_of_task(t) == "benchmark")
    assert len(bench_tasks) == 2
    assert {tasks[t]["taskInfo"]["name"] for t in bench_tasks} == {"benchmark-gedit", "benchmark-kris"}
    for t in bench_tasks:
        assert "rl" in ancestors(spec, t) and "evaluate" not in ancestors(spec, t)
    for t in ("challenge", "promote"):
        src = tasks[t]["inputs"]["artifacts"]["benchmark_results"]
        producer = src.get("taskOutputArtifact", {}).get("producerTask") or src["componentInputArtifact"]
        assert "benchmark" in producer, (t, src)
    _, plain, _ = load(compile_all(tmp_path / "plain", parse_params({}))["train"])
    assert "benchmark_results" not in flat_tasks(plain)["challenge"]["inputs"].get("artifacts", {})
    with pytest.raises(ValueError, match="no step to gate on"):
        build_pipelines(parse_params({"benchmarks": {"gate": gate}}))


@pytest.mark.parametrize("shards", [1, 3])
def test_generate_reads_prepared_tasks_when_compiled_with_them(tmp_path: Path, shards: int) -> None:
    """Compiled with prepared_tasks, the data and factory pipelines take `tasks_uri`, import it as a Dataset and
    hand it to generate (to every shard of the fan-out); without it they take no such argument."""
    params = parse_params({"generate": {"shards": shards}})
    generate_task = "generate-shard" if shards > 1 else "generate"
    for prepared in (True, False):
        paths = compile_all(tmp_path / str(prepared), params, prepared_tasks=prepared)
        for name in ("data", "factory"):
            _, spec, _ = load(paths[name])
            tasks = flat_tasks(spec)
            inputs = spec["root"]["inputDefinitions"]["parameters"]
            given = tasks[generate_task]["inputs"].get("artifacts", {})
            if not prepared:
                assert "tasks_uri" not in inputs and "tasks" not in given, name
                continue
            assert inputs["tasks_uri"]["parameterType"] == "STRING", name
            importers = [t for t in tasks if t.startswith("importer")]
            assert len(importers) == 1, name
            uri = tasks[importers[0]]["inputs"]["parameters"]["uri"]["componentInputParameter"]
            assert uri == "tasks_uri", name
            if shards == 1:
                assert given["tasks"]["taskOutputArtifact"]["producerTask"] == importers[0], name
            else:  # inside the ParallelFor: from the loop's input, which the importer's output feeds
                channel = given["tasks"]["componentInputArtifact"]
                loop = parents(spec)[generate_task]
                assert loop["inputs"]["artifacts"][channel]["taskOutputArtifact"]["producerTask"] == importers[0], name
            assert pipeline_arguments(params, name, "r", tasks_uri="s3://b/prepared")["tasks_uri"] == "s3://b/prepared"
        train = load(paths["train"])[1]
        assert "tasks_uri" not in train["root"]["inputDefinitions"]["parameters"]
    with pytest.raises(ValueError, match="does not generate"):
        pipeline_arguments(params, "train", "r", {"sft_data_uri": "a", "rl_data_uri": "b",
                                                 "trajectories_uri": "c"}, tasks_uri="s3://b/prepared")  # fmt: skip


@pytest.mark.parametrize("shards", [1, 3])
def test_generate_keeps_its_units_on_s3_when_params_name_a_bucket(tmp_path: Path, shards: int) -> None:
    """With params `s3` naming a bucket, generate (every shard of the fan-out) is compiled with that S3 config, so a
    retried step resumes finished units (storage_s3.S3UnitMirror; tests/test_s3.py runs the retry); without one,
    the argument is absent. The config carries no credential (they come from the environment)."""
    generate_task = "generate-shard" if shards > 1 else "generate"
    for bucket in ("units-bucket", ""):
        params = parse_params({"generate": {"shards": shards}, "s3": {"bucket": bucket, "prefix": "f"}})
        _, spec, _ = load(compile_all(tmp_path / (bucket or "none"), params)["data"])
        given = flat_tasks(spec)[generate_task]["inputs"].get("parameters", {})
        if not bucket:
            assert "units_s3_json" not in given
            continue
        value = json.loads(given["units_s3_json"]["runtimeValue"]["constant"])
        assert (value["bucket"], value["prefix"]) == ("units-bucket", "f")
        assert not {k for k in value if "key" in k.lower() or "secret" in k.lower()}
