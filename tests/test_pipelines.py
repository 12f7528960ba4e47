"""KFP drivers: the pipelines compile with the right shape, and kfp.local gives the same data as in-process."""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # components/ and pipelines/ live at the repository root
    sys.path.insert(0, str(ROOT))

import pipelines  # noqa: E402
from components import FACTORY_IMAGE  # noqa: E402
from kfp import compiler  # noqa: E402
from kfp.dsl.graph_component import GraphComponent  # noqa: E402

from editthinker.config import parse_params  # noqa: E402

CHAIN = ["generate", "filter", "split", "validate", "sft", "rl", "evaluate", "promote"]
EXPECTED = {"editthinker-factory": CHAIN, "editthinker-data": CHAIN[:4]}
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
    """Every task of the pipeline, sub-DAGs (nested pipelines) included, keyed by task name."""
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


def test_pipelines_compile_with_the_right_shape(tmp_path: Path) -> None:
    found = all_pipelines()
    assert set(EXPECTED) <= set(found), f"pipelines found: {sorted(found)}"
    for name, pipeline in found.items():
        path = tmp_path / f"{name}.yaml"
        compiler.Compiler().compile(pipeline, package_path=str(path))
        text = path.read_text()
        spec = yaml.safe_load(text)
        tasks = flat_tasks(spec)
        if name in EXPECTED:
            chain = EXPECTED[name]
            assert sorted(tasks) == sorted(chain)
            for before, after in zip(chain, chain[1:], strict=False):
                assert before in ancestors(spec, after), f"{name}: {after} does not wait for {before}"
        for tname, task in tasks.items():
            cached = task.get("cachingOptions", {}).get("enableCache", False)
            assert cached is (tname != "promote"), f"{name}: caching of {tname} is {cached}"
        # params come at run time only: no default is compiled in, and nothing secret-looking is
        params_def = spec["root"]["inputDefinitions"]["parameters"]["params_json"]
        assert "defaultValue" not in params_def
        for pattern in SECRET_PATTERNS:
            assert not pattern.search(text), f"{name}: secret-looking text {pattern.search(text)[0]!r}"
        for executor in spec["deploymentSpec"]["executors"].values():
            assert executor["container"]["image"] == FACTORY_IMAGE
            assert "env" not in executor["container"]
            assert not any("pip install" in part for part in executor["container"]["command"])


def tiny_params() -> dict[str, Any]:
    return {
        "generate": {"num_tasks": 12, "shards": 2},
        "evaluate": {"num_tasks": 4},
        "sft": {"max_steps": 2, "batch_size": 2},
        "rl": {"max_steps": 1, "batch_size": 2, "num_generations": 2},
    }


@pytest.mark.slow
def test_kfp_local_data_pipeline_matches_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.factory import run_local

    from editthinker.stages import filter as filter_stage
    from editthinker.stages import generate, split

    # kfp.local runs each task in a subprocess of this interpreter: it must find both source trees
    path = [str(ROOT / "src"), str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(path))
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
