"""SFT stage: teach a fresh tiny thinker the expert's step-wise answers (trl SFTTrainer, CPU).

Each step sample is a prompt (I_src, I_edit^{t-1}, T_s, T_{t-1}) and a completion, the expert's full
answer `target_text`; the loss is on the completion only.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from trl import SFTConfig, SFTTrainer

from editthinker.config import Params
from editthinker.models.tiny_vlm import build_tiny_thinker
from editthinker.records import iter_rows
from editthinker.stages import sections_of
from editthinker.training import (
    LogHistory,
    output_lock,
    run_settings,
    save_checkpoint,
    series,
    thinker_dataset,
    train_timed,
)


def run(params: Params, sft_data: Path, out_dir: Path) -> dict[str, Any]:
    with output_lock(out_dir):
        return _run(params, sft_data, out_dir)


def _run(params: Params, sft_data: Path, out_dir: Path) -> dict[str, Any]:
    cfg = params.sft
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    samples = list(iter_rows(Path(sft_data)))
    dataset = thinker_dataset(samples, completion=True)
    model, processor = build_tiny_thinker(params.thinker, seed=cfg.seed)
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
        result, timing = train_timed(trainer, "sft")
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
    return save_checkpoint(Path(out_dir), trainer.model, processor, "sft", params, sections_of("sft"),
                           {"sft_data": Path(sft_data)}, metrics)  # fmt: skip
