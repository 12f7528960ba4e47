"""Run a training stage (sft, rl) in this process, or under `accelerate launch` when it has several GPUs.

The KFP training steps call `run_training` with the number of processes the pipeline compiled in (the step's
`accelerator_count`) and an accelerate config (configs/accelerate/zero3.yaml or fsdp.yaml, as the image holds
them). One process: the stage's `run` here. More: the same command dvc.yaml runs, `editthinker.cli <stage>`,
under `accelerate launch --num_processes N --config_file <config>`, which starts one process per GPU; trl's
trainers need no other change (configs/README.md). No kfp here: the components stay thin drivers.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from editthinker.config import parse_params
from editthinker.stages import module_of

# each training stage's inputs, in order, with the CLI option that takes each and its `run` argument's name
TRAINING_INPUTS: dict[str, tuple[str, ...]] = {"sft": ("--data", "--images"),
                                               "rl": ("--data", "--sft-checkpoint", "--images")}  # fmt: skip
RUN_ARGUMENTS: dict[str, tuple[str, ...]] = {"sft": ("sft_data", "images"),
                                             "rl": ("rl_data", "sft_checkpoint", "images")}  # fmt: skip
ACCELERATE_CONFIGS = ("zero3", "fsdp")  # configs/accelerate/<name>.yaml


def _check(stage: str, inputs: Sequence[Path]) -> tuple[str, ...]:
    if stage not in TRAINING_INPUTS:
        raise ValueError(f"{stage!r} is not a training stage; training stages: {list(TRAINING_INPUTS)}")
    flags = TRAINING_INPUTS[stage]
    if len(inputs) != len(flags):
        raise ValueError(f"{stage} takes {len(flags)} inputs ({', '.join(flags)}), got {len(inputs)}")
    return flags


def accelerate_config_file(configs_dir: str | Path, name: str) -> Path:
    """configs/accelerate/<name>.yaml under `configs_dir` (the repository's or the image's configs/)."""
    if name not in ACCELERATE_CONFIGS:
        raise ValueError(f"accelerate config {name!r}: one of {list(ACCELERATE_CONFIGS)}")
    return Path(configs_dir) / "accelerate" / f"{name}.yaml"


def accelerate_argv(
    stage: str, num_processes: int, config_file: str | Path, params_file: Path, inputs: Sequence[Path], out: Path
) -> list[str]:
    """`accelerate launch --num_processes N --config_file C -m editthinker.cli <stage> --params P <inputs> --out O`,
    through this interpreter (`python -m accelerate.commands.launch` is the `accelerate launch` command)."""
    flags = _check(stage, inputs)
    if num_processes < 2:
        raise ValueError(f"accelerate launch is for 2 or more processes, not {num_processes}")
    stage_args = [a for flag, path in zip(flags, inputs, strict=True) for a in (flag, str(path))]
    return [
        sys.executable, "-m", "accelerate.commands.launch",
        "--num_processes", str(num_processes), "--config_file", str(config_file),
        "-m", "editthinker.cli", stage, "--params", str(params_file), *stage_args, "--out", str(out),
    ]  # fmt: skip


def run_training(
    stage: str,
    params_json: str,
    inputs: Sequence[Path],
    out: Path,
    num_processes: int = 1,
    config_file: str | Path = "",
    training_logs: Path | None = None,
) -> dict[str, Any]:
    """Train `stage` from `params_json` (its params sections) and `inputs` into `out`; return its metrics
    (the checkpoint's metrics.json). `training_logs`: a folder for the DVCLive curves (<folder>/<stage>)."""
    from editthinker.training import METRICS_FILE, TRAINING_LOGS_ENV  # (torch: not on the pipeline compiler's path)

    _check(stage, inputs)
    params = json.loads(params_json)
    parsed = parse_params(params)  # a bad key fails here, before any process starts
    env = {TRAINING_LOGS_ENV: str(training_logs)} if training_logs else {}
    if num_processes <= 1:
        stage_module = importlib.import_module(module_of(stage))
        with _environ(env):
            named = dict(zip(RUN_ARGUMENTS[stage], map(Path, inputs), strict=True))
            return dict(stage_module.run(parsed, out_dir=Path(out), **named))
    if not Path(config_file).is_file():
        raise FileNotFoundError(f"accelerate config {config_file} not found")
    with tempfile.TemporaryDirectory(prefix=f"{stage}-launch-") as tmp:
        params_file = Path(tmp) / "params.yaml"
        params_file.write_text(yaml.safe_dump(params, sort_keys=True))
        argv = accelerate_argv(stage, num_processes, config_file, params_file, list(map(Path, inputs)), Path(out))
        subprocess.run(argv, check=True, env={**os.environ, **env})
    return dict(json.loads((Path(out) / METRICS_FILE).read_text()))


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The numbers of a stage's metrics (no lists, flags or missing values), by name: what a step logs."""
    return {k: float(v) for k, v in sorted(metrics.items()) if type(v) in (int, float)}


@contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of the block."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
