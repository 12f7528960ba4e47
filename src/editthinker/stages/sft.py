"""SFT stage: teach a fresh tiny thinker the expert's step-wise answers (trl SFTTrainer, CPU).

Each step sample is a prompt (I_src, I_edit^{t-1}, T_s, T_{t-1}) and a completion, the expert's full
answer `target_text`; the loss is on the completion only.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from datasets import Dataset, Image, List
from tqdm import tqdm
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback
from trl import SFTConfig, SFTTrainer

from editthinker.config import Params
from editthinker.lineage import LINEAGE_FILE, make_lineage
from editthinker.models.tiny_vlm import build_thinker, checkpoint_id, save_thinker, thinker_messages
from editthinker.records import iter_rows
from editthinker.storage import atomic_dir, write_json

METRICS_FILE = "metrics.json"


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


def train_timed(trainer: Any) -> tuple[Any, dict[str, Any]]:
    """Train with one progress bar (no per-step printout); the result and the run's step/time figures."""
    trainer.remove_callback(PrinterCallback)
    t0 = time.perf_counter()
    result = trainer.train()
    wall = time.perf_counter() - t0
    steps = int(result.global_step)
    return result, {"steps": steps, "steps_per_second": steps / wall if wall > 0 else None, "wall_seconds": wall}


def series(logs: list[dict[str, float]], key: str) -> list[float]:
    return [float(r[key]) for r in logs if key in r]


def save_checkpoint(out_dir: Path, model, processor, stage: str, params: Params, sections: tuple[str, ...],
                    inputs: dict[str, Path], metrics: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Write the checkpoint, lineage.json and metrics.json into `out_dir` atomically (under `accelerate
    launch`, only the main process writes)."""
    if not PartialState().is_main_process:
        return metrics
    with atomic_dir(out_dir) as tmp:
        save_thinker(model, processor, tmp)
        metrics = {**metrics, "model_id": checkpoint_id(tmp)}
        write_json(tmp / LINEAGE_FILE, make_lineage(stage, params, sections, inputs, {"thinker": metrics["model_id"]}))
        write_json(tmp / METRICS_FILE, metrics)
    return metrics


def run(params: Params, sft_data: Path, out_dir: Path) -> dict[str, Any]:
    cfg = params.sft
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    samples = list(iter_rows(Path(sft_data)))
    dataset = thinker_dataset(samples, completion=True)
    model, processor = build_thinker(params.thinker, seed=cfg.seed)
    model.train()
    history = LogHistory("sft")
    with tempfile.TemporaryDirectory(prefix="sft-") as work:
        args = SFTConfig(
            output_dir=work,
            max_steps=cfg.max_steps,
            per_device_train_batch_size=cfg.batch_size,
            learning_rate=cfg.learning_rate,
            lr_scheduler_type="cosine",
            warmup_steps=cfg.warmup_ratio,
            weight_decay=cfg.weight_decay,
            seed=cfg.seed,
            data_seed=cfg.seed,
            completion_only_loss=True,
            max_length=None,
            **run_settings(),
            dataloader_num_workers=0,
        )
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor,
                             callbacks=[history])  # fmt: skip
        result, timing = train_timed(trainer)
    losses = series(history.logs, "loss")
    metrics = {
        "stage": "sft",
        "samples": len(samples),
        "train_loss_first": losses[0] if losses else None,
        "train_loss_last": losses[-1] if losses else None,
        "train_loss_mean": float(result.training_loss),
        "loss_curve": losses,
        **timing,
    }
    model.eval()
    return save_checkpoint(Path(out_dir), trainer.model, processor, "sft", params, ("thinker", "sft"),
                           {"sft_data": Path(sft_data)}, metrics)  # fmt: skip
