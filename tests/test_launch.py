"""The training launcher the KFP steps call (editthinker.launch): in this process, or `accelerate launch` of the
stage's CLI over several processes; the DVCLive curves of a training stage, and that logging them leaves the
trained weights untouched."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from editthinker.launch import accelerate_argv, accelerate_config_file, run_training, scalar_metrics
from editthinker.lineage import hash_path
from editthinker.training import TRAINING_LOGS_ENV
from test_training import step_samples, write_steps

ROOT = Path(__file__).resolve().parents[1]
PARAMS = {
    "thinker": {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "max_new_tokens": 64},
    "sft": {"max_steps": 3, "batch_size": 2},
}
# accelerate's multi-GPU launcher (torchrun, one process per device) on a machine without GPUs: the trainer
# (use_cpu without CUDA) then runs DDP over gloo on CPUs. The launcher path a multi-GPU step takes.
TWO_PROCESSES = """compute_environment: LOCAL_MACHINE
distributed_type: MULTI_GPU
num_machines: 1
num_processes: 2
machine_rank: 0
mixed_precision: 'no'
use_cpu: false
rdzv_backend: static
same_network: true
"""


def test_accelerate_argv_launches_the_stage_cli() -> None:
    config = accelerate_config_file(ROOT / "configs", "zero3")
    assert config.is_file()
    p, data, sft, out = Path("/tmp/p.yaml"), Path("/in/rl"), Path("/in/sft"), Path("/out/rl")
    images = Path("/in/trajectories/images")
    argv = accelerate_argv("rl", 4, config, p, [data, sft, images], out)
    assert argv[:3] == [sys.executable, "-m", "accelerate.commands.launch"]  # = `accelerate launch`
    assert argv[3:] == [
        "--num_processes", "4", "--config_file", str(config),
        "-m", "editthinker.cli", "rl", "--params", str(p), "--data", str(data), "--sft-checkpoint", str(sft),
        "--images", str(images), "--out", str(out),
    ]  # fmt: skip
    sft_argv = accelerate_argv("sft", 2, accelerate_config_file(ROOT / "configs", "fsdp"), p, [data, images], out)
    assert sft_argv[sft_argv.index("--config_file") + 1].endswith("configs/accelerate/fsdp.yaml")
    assert sft_argv[sft_argv.index("editthinker.cli") + 1 :] == [
        "sft", "--params", str(p), "--data", str(data), "--images", str(images), "--out", str(out),
    ]  # fmt: skip


def test_launcher_refuses_what_it_cannot_launch(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'evaluate' is not a training stage"):
        accelerate_argv("evaluate", 2, "c.yaml", tmp_path / "p", [tmp_path], tmp_path)
    with pytest.raises(ValueError, match=r"rl takes 3 inputs \(--data, --sft-checkpoint, --images\), got 2"):
        accelerate_argv("rl", 2, "c.yaml", tmp_path / "p", [tmp_path, tmp_path], tmp_path)
    with pytest.raises(ValueError, match="2 or more processes"):
        accelerate_argv("sft", 1, "c.yaml", tmp_path / "p", [tmp_path, tmp_path], tmp_path)
    with pytest.raises(ValueError, match="accelerate config 'ddp'"):
        accelerate_config_file(ROOT / "configs", "ddp")
    with pytest.raises(FileNotFoundError, match="accelerate config"):
        run_training("sft", json.dumps(PARAMS), [tmp_path, tmp_path], tmp_path / "out", 2, tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match=r"sft\.max_stepz: unknown key"):
        run_training("sft", json.dumps({"sft": {"max_stepz": 1}}), [tmp_path, tmp_path], tmp_path / "out", 2, "")
    assert not (tmp_path / "out").exists()


def test_scalar_metrics_keeps_numbers_only() -> None:
    metrics = {"stage": "sft", "steps": 3, "loss_curve": [1.0], "train_loss_last": 0.5, "x": None, "ok": True}
    assert scalar_metrics(metrics) == {"steps": 3.0, "train_loss_last": 0.5}


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("steps") / "sft"
    write_steps(root, step_samples(21, 8, "sft"), rows_per_shard=10)
    return root


@pytest.mark.slow
def test_in_process_training_logs_dvclive_curves_and_the_same_weights(sft_data: Path, tmp_path: Path) -> None:
    pytest.importorskip("dvclive", reason="dvclive (requirements.lock) is not installed")
    from editthinker.config import parse_params
    from editthinker.stages import sft

    plain = sft.run(parse_params(PARAMS), sft_data, tmp_path / "plain")
    logs = tmp_path / "logs"
    logged = run_training("sft", json.dumps(PARAMS), [sft_data, sft_data / "images"], tmp_path / "logged", 1, "", logs)
    assert TRAINING_LOGS_ENV not in os.environ  # set for the run only
    assert logged["model_id"] == plain["model_id"] and logged["loss_curve"] == plain["loss_curve"]
    assert hash_path(tmp_path / "logged") == hash_path(tmp_path / "plain")  # the checkpoint holds no logs
    assert not any(p.suffix == ".tsv" for p in (tmp_path / "logged").rglob("*"))
    summary = json.loads((logs / "sft/metrics.json").read_text())
    assert summary["step"] == PARAMS["sft"]["max_steps"]  # the final summary line is one more step
    assert summary["loss"] == pytest.approx(plain["train_loss_last"])
    rows = (logs / "sft/plots/metrics/loss.tsv").read_text().splitlines()
    assert rows[0] == "step\tloss"
    assert [float(r.split("\t")[1]) for r in rows[1:]] == pytest.approx(plain["loss_curve"])


@pytest.mark.slow
def test_accelerate_launch_trains_over_two_processes(sft_data: Path, tmp_path: Path, capfd) -> None:
    """`accelerate launch --num_processes 2` of the sft CLI (DDP over gloo on CPUs: the launcher path a multi-GPU
    step takes, without GPUs); the main process alone writes the checkpoint and the curves."""
    pytest.importorskip("dvclive", reason="dvclive (requirements.lock) is not installed")
    config = tmp_path / "two_processes.yaml"
    config.write_text(TWO_PROCESSES)
    out, logs = tmp_path / "out", tmp_path / "logs"
    metrics = run_training("sft", json.dumps(PARAMS), [sft_data, sft_data / "images"], out, 2, config, logs)
    printed = capfd.readouterr()
    assert (printed.out + printed.err).count("sft done") == 2, "one line per process"
    assert metrics["steps"] == PARAMS["sft"]["max_steps"] and metrics["model_id"].startswith("tiny-qwen2.5-vl@")
    assert json.loads((out / "lineage.json").read_text())["stage"] == "sft"
    assert (logs / "sft/plots/metrics/loss.tsv").is_file()


def test_the_cli_names_the_training_logs_variable_the_trainer_reads() -> None:
    """`editthinker run` sets the variable by name, without importing training (torch) in its own process."""
    import inspect

    from editthinker import cli

    assert f'"{TRAINING_LOGS_ENV}"' in inspect.getsource(cli._run_stage_process)


def test_report_metrics_logs_each_number_and_writes_the_same_as_json(tmp_path) -> None:
    """What the sft, rl and evaluate steps show: every scalar through the logger, and the same numbers in a file."""
    from editthinker.summaries import report_metrics

    logged: list[tuple[str, float]] = []
    path = tmp_path / "deep" / "metrics"
    report_metrics({"steps": 3.0, "loss": 0.5}, lambda k, v: logged.append((k, v)), path)
    assert logged == [("steps", 3.0), ("loss", 0.5)]
    assert json.loads(path.read_text()) == {"steps": 3.0, "loss": 0.5}
