"""What the two training stages (sft, rl) share: the step samples as a trl dataset, the trainer settings,
one progress bar and the logged history, the training curves for DVC (DVCLive), and an atomic checkpoint with
its lineage and metrics."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from datasets import Dataset, Image, List
from tqdm import tqdm
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback

from editthinker.config import Params
from editthinker.lineage import LINEAGE_FILE, make_lineage
from editthinker.models.vlm import checkpoint_id, save_thinker, thinker_messages
from editthinker.storage import atomic_dir, write_json, writer_lock

METRICS_FILE = "metrics.json"
# A folder: when set, a training stage logs its curves with DVCLive under <folder>/<stage> (dvc.yaml sets it to
# reports/training; the KFP training steps to an output artifact). Never inside the checkpoint, which must hash
# the same whenever the same weights are trained.
TRAINING_LOGS_ENV = "EDITTHINKER_TRAINING_LOGS"


def thinker_dataset(samples: list[dict[str, Any]], completion: bool, keep: tuple[str, ...] = ()) -> Dataset:
    """Step samples as a trl dataset: `prompt`, `images` (PNG, decoded lazily), `completion` and `keep` columns."""
    rows = []
    for s in samples:
        row = {
            "prompt": thinker_messages(s["original_instruction"], s["previous_instruction"]),
            "images": [{"bytes": s["source_png"], "path": None}, {"bytes": s["previous_png"], "path": None}],
            **{k: s[k] for k in keep},
        }
        if completion:
            row["completion"] = [{"role": "assistant", "content": s["target_text"]}]
        rows.append(row)
    if not rows:
        raise ValueError("no step samples to train on")
    return Dataset.from_list(rows).cast_column("images", List(Image()))


class LogHistory(TrainerCallback):
    """Keeps every logged value per step, and shows one progress bar instead of a printed dict per step."""

    def __init__(self, desc: str) -> None:
        self.logs: list[dict[str, float]] = []
        self.desc = desc
        self.bar: tqdm | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.bar = tqdm(total=state.max_steps, desc=self.desc, unit="step", disable=None)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(1)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs:
            numbers = {k: v for k, v in logs.items() if isinstance(v, int | float)}
            self.logs.append({"step": state.global_step, **numbers})


def is_main_process() -> bool:
    """The process that writes outputs: rank 0 of a launch (the launcher's RANK, which also holds on CPUs, where
    accelerate's state may not know the other processes), and accelerate's main process."""
    return int(os.environ.get("RANK", "0")) == 0 and PartialState().is_main_process


def run_settings() -> dict[str, Any]:
    """Trainer arguments both training stages share: the device, precision, logging and no checkpoints."""
    cuda = torch.cuda.is_available()
    return {
        "activation_checkpointing": False,  # (the non-deprecated name of gradient_checkpointing)
        "use_cpu": not cuda,  # GPUs when present (accelerate launch), else the CPU
        "bf16": cuda and torch.cuda.is_bf16_supported(),
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
    }


def training_log_dir(stage: str) -> Path | None:
    """Where `stage` logs its training curves: $EDITTHINKER_TRAINING_LOGS/<stage>, or None (no curves)."""
    root = os.environ.get(TRAINING_LOGS_ENV, "")
    return Path(root) / stage if root else None


def dvclive_callback(log_dir: Path) -> TrainerCallback | None:
    """transformers' DVCLive callback logging every Trainer log line (loss, learning rate, rewards...) as one step
    under `log_dir`: `metrics.json` (last values), `plots/metrics/**/*.tsv` (curves by step), `params.yaml`
    (the trainer arguments). dvc.yaml declares the first two (`dvc metrics`, `dvc plots`), so it writes no
    dvc.yaml of its own and saves no experiment. Only the main process logs (None on the others)."""
    if not is_main_process():
        return None
    from dvclive import Live
    from transformers.integrations import DVCLiveCallback

    return DVCLiveCallback(live=Live(dir=str(log_dir), dvcyaml=False, save_dvc_exp=False, report=None))


def train_timed(trainer: Any, stage: str | None = None) -> tuple[Any, dict[str, Any]]:
    """Train with one progress bar (no per-step printout); the result and the run's step/time figures. With
    `stage` and $EDITTHINKER_TRAINING_LOGS set, the curves also go to DVCLive (`training_log_dir`)."""
    trainer.remove_callback(PrinterCallback)
    log_dir = training_log_dir(stage) if stage else None
    live = dvclive_callback(log_dir) if log_dir else None
    if live is not None:
        trainer.add_callback(live)
    t0 = time.perf_counter()
    result = trainer.train()
    wall = time.perf_counter() - t0
    steps = int(result.global_step)
    return result, {"steps": steps, "steps_per_second": steps / wall if wall > 0 else None, "wall_seconds": wall}


def series(logs: list[dict[str, float]], key: str) -> list[float]:
    return [float(r[key]) for r in logs if key in r]


@contextmanager
def output_lock(out_dir: Path) -> Iterator[None]:
    """The writer lock of a training stage's output, held by the process that writes it (the main one under
    `accelerate launch`) from the start of training: a second run of the same output fails at once."""
    with writer_lock(Path(out_dir)) if is_main_process() else nullcontext():
        yield


def save_checkpoint(out_dir: Path, model, processor, stage: str, params: Params, sections: tuple[str, ...],
                    inputs: dict[str, Path], metrics: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Write the checkpoint, lineage.json and metrics.json into `out_dir` atomically (under `accelerate
    launch`, only the main process writes)."""
    if not is_main_process():
        return metrics
    with atomic_dir(out_dir) as tmp:
        save_thinker(model, processor, tmp, params.thinker.kind)
        metrics = {**metrics, "model_id": checkpoint_id(tmp)}
        write_json(tmp / LINEAGE_FILE, make_lineage(stage, params, sections, inputs, {"thinker": metrics["model_id"]}))
        write_json(tmp / METRICS_FILE, metrics)
    return metrics
