"""SFT stage: teach the thinker the expert's step-wise answers (trl SFTTrainer).

Each step sample is a prompt (I_src, I_edit^{t-1}, T_s, T_{t-1}) and a completion, the expert's full
answer `target_text`; the loss is on the completion only. The thinker starts from `thinker.base_model` (a
pretrained image-text-to-text model by hub id or folder) or, without one, from a fresh tiny offline thinker
(the demo). What trains (frozen parts, LoRA), the batch and the checkpoints come from params.sft; a rerun with
the same inputs and params resumes from the run's last checkpoint (`restart` starts over).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from trl import SFTConfig, SFTTrainer

from editthinker.config import Params, SFTParams, ThinkerModelConfig
from editthinker.images import open_store_for
from editthinker.models.tiny_vlm import QWEN3_KIND, build_tiny_qwen3_thinker, build_tiny_thinker
from editthinker.models.vlm import checkpoint_id, family_of, load_base, set_image_pixels
from editthinker.records import iter_rows
from editthinker.stages import sections_of
from editthinker.training import (
    LogHistory,
    close_work_dir,
    open_work_dir,
    output_lock,
    prepare_model,
    run_key,
    save_checkpoint,
    series,
    thinker_dataset,
    train_timed,
    trainer_settings,
    work_dir,
)


def start_thinker(thinker: ThinkerModelConfig, cfg: SFTParams) -> tuple[Any, Any, str, dict[str, str]]:
    """The model SFT starts from, its processor, its kind (for checkpoint ids) and the lineage of its weights."""
    model: Any
    processor: Any
    kind: str
    if thinker.base_model is None:
        build = build_tiny_qwen3_thinker if thinker.kind == QWEN3_KIND else build_tiny_thinker
        model, processor = build(thinker, seed=cfg.seed)
        models: dict[str, str] = {}
        kind = thinker.kind
    else:
        quantization = cfg.lora.quantization if cfg.lora else "none"
        model, processor = load_base(thinker.base_model, thinker.revision, thinker.dtype, thinker.trust_remote_code,
                                     quantization)  # fmt: skip
        models = {"base": base_id(thinker.base_model, thinker.revision, getattr(model.config, "_commit_hash", None))}
        kind = family_of(model)
    set_image_pixels(processor, thinker.image_min_pixels, thinker.image_max_pixels)
    return model, processor, kind, models


def base_id(base: str, revision: str | None, commit: str | None) -> str:
    """Names the base's exact weights: a folder by its checkpoint id, a hub id by the commit it resolved to."""
    if Path(base).is_dir():
        return checkpoint_id(base)
    return f"{base}@{commit or revision or 'main'}"


def run(params: Params, sft_data: Path, out_dir: Path, images: Path | None = None,
        restart: bool = False) -> dict[str, Any]:  # fmt: skip
    """Train on the step samples `sft_data`, whose images are in the store `images` (the one their manifest
    names: checked before anything is trained; None: `<sft_data>/images`, where an imported dataset keeps it)."""
    with output_lock(out_dir):
        return _run(params, sft_data, out_dir, Path(sft_data) / "images" if images is None else images, restart)


def _run(params: Params, sft_data: Path, out_dir: Path, images: Path, restart: bool) -> dict[str, Any]:
    cfg = params.sft
    store = open_store_for(Path(sft_data), Path(images))
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    samples = list(iter_rows(Path(sft_data)))
    dataset = thinker_dataset(samples, completion=True, images=store)
    inputs = {"sft_data": Path(sft_data), "images": Path(images)}
    work = work_dir(Path(out_dir), "sft", run_key("sft", params, sections_of("sft"), inputs))
    model, processor, kind, models = start_thinker(params.thinker, cfg)
    peft_config = prepare_model(model, cfg)
    model.train()
    args = SFTConfig(**trainer_settings(cfg, "sft", work), completion_only_loss=True, max_length=cfg.max_length)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor,
                         callbacks=[LogHistory("sft")], peft_config=peft_config)  # fmt: skip
    resume = open_work_dir(work, restart)  # after the Trainer: every process of a launch knows its rank
    result, timing = train_timed(trainer, resume, "sft")
    losses = series(trainer.state.log_history, "loss")
    metrics = {
        "stage": "sft",
        "samples": len(samples),
        "train_loss_first": losses[0] if losses else None,
        "train_loss_last": losses[-1] if losses else None,
        # a resumed run's Trainer averages only the steps it ran: the logged curve covers them all
        "train_loss_mean": float(result.training_loss) if resume is None else sum(losses) / max(len(losses), 1),
        "loss_curve": losses,
        **timing,
    }
    trained: Any = trainer.model
    trained.eval()
    merge_base = None
    t = params.thinker
    if cfg.lora is not None and cfg.lora.quantization != "none" and t.base_model is not None:
        base = t.base_model
        merge_base = lambda: load_base(base, t.revision, t.dtype, t.trust_remote_code)[0]  # noqa: E731
    metrics = save_checkpoint(Path(out_dir), trained, processor, "sft", params, sections_of("sft"), inputs,
                              metrics, kind=kind, models=models, trainer=trainer, merge_base=merge_base)  # fmt: skip
    close_work_dir(work)
    return metrics
