"""What the two training stages (sft, rl) share: the step samples as a trl dataset, the trainer settings from
their params section, what trains (frozen parts, LoRA), resumable runs, one progress bar, and an atomic
checkpoint with its lineage and metrics; the training curves for DVC (DVCLive).

Resumable runs: a stage trains in a work folder named by the run's key (stage, params sections, code, inputs),
checkpointing every save_steps; a rerun with the same key resumes from the newest whole checkpoint there, and the
folder is removed once the output is saved."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from datasets import Dataset, Image, List
from tqdm import tqdm
from transformers import PreTrainedModel, TrainerCallback
from transformers.trainer_callback import PrinterCallback

from editthinker.config import Params, TrainingParams
from editthinker.images import ImageStore
from editthinker.lineage import LINEAGE_FILE, make_lineage
from editthinker.models.parts import PARTS, freeze, lora_target_names
from editthinker.models.vlm import checkpoint_id, save_thinker, thinker_messages
from editthinker.storage import atomic_dir, write_json, writer_lock

METRICS_FILE = "metrics.json"
# A folder: when set, a training stage logs its curves with DVCLive under <folder>/<stage> (dvc.yaml sets it to
# reports/training; the KFP training steps to an output artifact). Never inside the checkpoint, which must hash
# the same whenever the same weights are trained.
TRAINING_LOGS_ENV = "EDITTHINKER_TRAINING_LOGS"


def thinker_dataset(samples: list[dict[str, Any]], completion: bool, images: ImageStore,
                    keep: tuple[str, ...] = ()) -> Dataset:  # fmt: skip
    """Step samples as a trl dataset: `prompt`, `images` (the encoded bytes of I_src and I_{t-1} from the image
    store the samples' hashes are in, decoded lazily), `completion` and `keep` columns."""
    rows = []
    for s in samples:
        pair = [{"bytes": images.bytes_of(s[c]), "path": None} for c in ("source_image", "previous_image")]
        row = {
            "prompt": thinker_messages(s["original_instruction"], s["previous_instruction"]),
            "images": pair,
            **{k: s[k] for k in keep},
        }
        if completion:
            row["completion"] = [{"role": "assistant", "content": s["target_text"]}]
        rows.append(row)
    if not rows:
        raise ValueError("no step samples to train on")
    return Dataset.from_list(rows).cast_column("images", List(Image()))


class LogHistory(TrainerCallback):
    """One progress bar instead of a printed dict per step (from the resumed step on a resumed run)."""

    def __init__(self, desc: str) -> None:
        self.desc = desc
        self.bar: tqdm | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc=self.desc, unit="step", disable=None)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(1)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()


class DropEmptyLogs(TrainerCallback):
    """Leaves out of a log line the values that are None (a GRPO diagnostic that applied to no sample of the
    step) before the loggers after it see them; the Trainer's own log history keeps them."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in [k for k, v in (logs or {}).items() if v is None]:
            del logs[key]


class SkipFinalCheckpoint(TrainerCallback):
    """No checkpoint at the last step: the stage saves its output right after, and a checkpoint there would
    only cost time (the Trainer saves one at the end under save_strategy "steps")."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_save = False
        return control


def is_main_process() -> bool:
    """The process that writes outputs: rank 0 of a launch (the launcher's RANK, which also holds on CPUs, where
    accelerate's state may not know the other processes), and accelerate's main process."""
    return int(os.environ.get("RANK", "0")) == 0 and PartialState().is_main_process


def world_size() -> int:
    """Processes of this launch (1 without `accelerate launch`): the launcher's WORLD_SIZE, which holds before the
    Trainer sets up the processes (as RANK does for `is_main_process`)."""
    return int(os.environ.get("WORLD_SIZE") or PartialState().num_processes)


def accumulation_steps(cfg: TrainingParams, section: str, processes: int) -> int:
    """Gradient accumulation: given, or derived from global_batch_size = batch_size x accumulation x processes."""
    if cfg.global_batch_size is None:
        return cfg.gradient_accumulation_steps
    per_step = cfg.batch_size * processes
    if cfg.global_batch_size % per_step:
        raise ValueError(
            f"{section}.global_batch_size ({cfg.global_batch_size}) is not a multiple of {section}.batch_size x "
            f"processes ({cfg.batch_size} x {processes})"
        )
    return cfg.global_batch_size // per_step


def _precision(cfg: TrainingParams) -> dict[str, bool]:
    cuda = torch.cuda.is_available()
    if cfg.precision == "auto":
        return {"bf16": cuda and torch.cuda.is_bf16_supported(), "fp16": False}
    if cfg.precision != "fp32" and not cuda:
        raise ValueError(f"precision {cfg.precision} needs a GPU; use auto or fp32 on the CPU")
    return {"bf16": cfg.precision == "bf16", "fp16": cfg.precision == "fp16"}


def trainer_settings(cfg: TrainingParams, section: str, work: Path) -> dict[str, Any]:
    """Trainer arguments both training stages take from their params section: schedule, batch, precision,
    checkpoints every save_steps into `work` (the run's own folder, see `work_dir`), device and logging."""
    cuda = torch.cuda.is_available()
    return {
        "output_dir": str(work),
        "max_steps": cfg.max_steps if cfg.max_steps is not None else -1,
        "num_train_epochs": cfg.num_train_epochs,
        "per_device_train_batch_size": cfg.batch_size,
        "gradient_accumulation_steps": accumulation_steps(cfg, section, world_size()),
        "learning_rate": cfg.learning_rate,
        "lr_scheduler_type": cfg.lr_scheduler,
        "warmup_steps": cfg.warmup_ratio,  # below 1: a ratio of the total steps
        "weight_decay": cfg.weight_decay,
        "seed": cfg.seed,
        "data_seed": cfg.seed,
        "activation_checkpointing": cfg.gradient_checkpointing,  # (the non-deprecated name of gradient_checkpointing)
        "activation_checkpointing_kwargs": {"use_reentrant": False} if cfg.gradient_checkpointing else None,
        "use_cpu": not cuda,  # GPUs when present (accelerate launch), else the CPU
        **_precision(cfg),
        "save_strategy": "steps" if cfg.save_steps else "no",
        "save_steps": cfg.save_steps or 500,
        "save_total_limit": cfg.save_total_limit,
        "logging_steps": 1,
        "report_to": "none",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }


# -- what trains --------------------------------------------------------------------------------------------
def frozen_parts(cfg: TrainingParams) -> set[str]:
    flags = {"vision_tower": cfg.freeze_vision_tower, "projector": cfg.freeze_projector,
             "language_model": cfg.freeze_language_model}  # fmt: skip
    return {part for part, on in flags.items() if on}


def prepare_model(model: Any, cfg: TrainingParams) -> Any:
    """Freeze the parts params freeze; with `lora`, the peft LoraConfig for the trainer (adapters on the target
    linear layers of the parts that train; the base stays frozen). None for a full fine-tune."""
    frozen = frozen_parts(cfg)
    if cfg.lora is None:
        if frozen:
            freeze(model, frozen)
        return None
    if world_size() > 1 and os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        raise ValueError("lora: LoRA runs here on one GPU (or DDP), not under DeepSpeed; fine-tune fully instead")
    from peft import LoraConfig, prepare_model_for_kbit_training

    targets = lora_target_names(model, cfg.lora.target_modules, set(PARTS) - frozen)
    if cfg.lora.quantization != "none":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    return LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout, target_modules=targets)


# -- resumable runs ------------------------------------------------------------------------------------------
CHECKPOINT_ROOT_ENV = "EDITTHINKER_CHECKPOINT_ROOT"  # where runs keep checkpoints (a PVC in a pipeline step)
RESUME_STATE = "trainer_state.json"  # the Trainer writes it last into a checkpoint: a checkpoint with it is whole


def run_key(stage: str, params: Params, sections: tuple[str, ...], inputs: dict[str, Path]) -> str:
    """The identity of a training run: its stage, params sections, code and inputs (what its lineage records)."""
    lineage = make_lineage(stage, params, sections, inputs, {})
    return hashlib.sha256(json.dumps(lineage, sort_keys=True).encode()).hexdigest()


def work_dir(out_dir: Path, stage: str, key: str) -> Path:
    """The run's checkpoint folder: under $EDITTHINKER_CHECKPOINT_ROOT if set (a volume that outlives a pod),
    else beside the output. Named by the run's key, so a rerun with the same inputs and params finds it."""
    root = os.environ.get(CHECKPOINT_ROOT_ENV)
    if root:
        return Path(root) / f"{stage}-{key[:16]}"
    out_dir = Path(out_dir)
    return out_dir.parent / f".{out_dir.name}.{stage}-{key[:16]}.checkpoints"


def _step_of(path: Path) -> int:
    m = re.fullmatch(r"checkpoint-(\d+)", path.name)
    return int(m.group(1)) if m else -1


def last_checkpoint(work: Path) -> Path | None:
    """The newest whole checkpoint in `work` (one a kill left half-written is skipped)."""
    for path in sorted((p for p in Path(work).glob("checkpoint-*") if _step_of(p) >= 0), key=_step_of, reverse=True):
        try:
            json.loads((path / RESUME_STATE).read_text())
        except (OSError, ValueError):
            continue
        return path
    return None


def open_work_dir(work: Path, restart: bool) -> Path | None:
    """Prepare the run's checkpoint folder; the checkpoint to resume from, or None. `restart` starts over.
    Call it once the Trainer exists (it sets up the processes a launch runs, which wait here for the main one)."""
    state = PartialState()
    if is_main_process():
        if restart and work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True, exist_ok=True)
        resume = last_checkpoint(work)
        for stale in work.glob("checkpoint-*"):  # half-written ones newer than the resume point
            if resume is None or _step_of(stale) > _step_of(resume):
                shutil.rmtree(stale, ignore_errors=True)
    state.wait_for_everyone()
    return last_checkpoint(work)


def close_work_dir(work: Path) -> None:
    """The run's output is saved: its checkpoints go."""
    if is_main_process():
        shutil.rmtree(work, ignore_errors=True)


class _KeyMismatchOnResume(logging.Filter):
    """Drops the Trainer's missing/unexpected-keys warnings of a resume whose weights `restore_weights` loads."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("There were missing keys", "There were unexpected keys"))


def restore_weights(model: Any, checkpoint: Path) -> bool:
    """Load a full checkpoint's weights into `model` in place, through from_pretrained's key mapping.

    transformers 5.24's Trainer resumes by loading the checkpoint's safetensors by raw key, but save_pretrained
    writes Qwen-VL keys in their legacy form (`model.layers.*`, `visual.*`), so the resumed model would keep its
    fresh weights with only a warning (QwenLM/Qwen3-VL#1763, modelscope/ms-swift#7947). False when there is
    nothing to do here: an adapter checkpoint (peft loads it) or a sharding launcher's own checkpoint."""
    if not isinstance(model, PreTrainedModel) or not (Path(checkpoint) / "config.json").is_file():
        return False
    loaded = type(model).from_pretrained(checkpoint, dtype=model.dtype, use_safetensors=True)
    model.load_state_dict(loaded.state_dict(), strict=True)
    return True


def training_log_dir(stage: str) -> Path | None:
    """Where `stage` logs its training curves: $EDITTHINKER_TRAINING_LOGS/<stage>, or None (no curves)."""
    root = os.environ.get(TRAINING_LOGS_ENV, "")
    return Path(root) / stage if root else None


def dvclive_callback(log_dir: Path, start_step: int = 0) -> TrainerCallback | None:
    """transformers' DVCLive callback logging every Trainer log line (loss, learning rate, rewards...) as one step
    under `log_dir`: `metrics.json` (last values), `plots/metrics/**/*.tsv` (curves by step), `params.yaml`
    (the trainer arguments). dvc.yaml declares the first two (`dvc metrics`, `dvc plots`), so it writes no
    dvc.yaml of its own and saves no experiment. A run resumed at `start_step` continues the curves from there.
    Only the main process logs (None on the others)."""
    if not is_main_process():
        return None
    from dvclive import Live
    from transformers.integrations import DVCLiveCallback

    if start_step:
        _drop_curve_rows(log_dir, start_step)
    live = Live(dir=str(log_dir), dvcyaml=False, save_dvc_exp=False, report=None, resume=start_step > 0)
    if start_step:
        live.step = start_step  # DVCLive's step is the Trainer's global step - 1
    return DVCLiveCallback(live=live)


def _drop_curve_rows(log_dir: Path, start_step: int) -> None:
    """Forget the curve rows a killed run logged after the checkpoint a resume starts from (DVCLive steps
    >= start_step), so the resumed run logs them once."""
    for tsv in Path(log_dir).rglob("*.tsv"):
        header, *rows = tsv.read_text().splitlines()
        col = header.split("\t").index("step") if "step" in header.split("\t") else None
        if col is not None:
            kept = [r for r in rows if int(r.split("\t")[col]) < start_step]
            tsv.write_text("\n".join([header, *kept]) + "\n")


def train_timed(trainer: Any, resume_from: Path | None, stage: str | None = None) -> tuple[Any, dict[str, Any]]:
    """Train (from `resume_from` if given) with one progress bar (no per-step printout); the result and the
    run's step/time figures: `steps` in all, `steps_run` by this process, `resumed_from_step`. With `stage` and
    $EDITTHINKER_TRAINING_LOGS set, the curves also go to DVCLive (`training_log_dir`)."""
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(SkipFinalCheckpoint())
    start = int(json.loads((resume_from / RESUME_STATE).read_text())["global_step"]) if resume_from else 0
    log_dir = training_log_dir(stage) if stage else None
    live = dvclive_callback(log_dir, start) if log_dir else None
    if live is not None:
        trainer.add_callback(DropEmptyLogs())
        trainer.add_callback(live)
    sharded = getattr(trainer, "is_deepspeed_enabled", False) or getattr(trainer, "is_fsdp_enabled", False)
    quiet = _KeyMismatchOnResume()
    if resume_from is not None and not sharded and restore_weights(trainer.model, resume_from):
        logging.getLogger("transformers.trainer").addFilter(quiet)
    t0 = time.perf_counter()
    try:
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    finally:
        logging.getLogger("transformers.trainer").removeFilter(quiet)
    wall = time.perf_counter() - t0
    steps = int(result.global_step)
    run = steps - start
    return result, {"steps": steps, "steps_run": run, "resumed_from_step": start,
                    "steps_per_second": run / wall if wall > 0 else None, "wall_seconds": wall}  # fmt: skip


def series(logs: list[dict[str, float]], key: str) -> list[float]:
    """`key`'s logged values, in step order; steps where it had no value (None: a GRPO diagnostic that applied to
    no sample of that step) are left out."""
    return [float(r[key]) for r in logs if r.get(key) is not None]


@contextmanager
def output_lock(out_dir: Path) -> Iterator[None]:
    """The writer lock of a training stage's output, held by the process that writes it (the main one under
    `accelerate launch`) from the start of training: a second run of the same output fails at once."""
    with writer_lock(Path(out_dir)) if is_main_process() else nullcontext():
        yield


def _final_state_dict(trainer: Any) -> dict[str, Any] | None:
    """The whole model's weights when a launcher shards them (DeepSpeed ZeRO-3, FSDP): gathered on every process
    (a collective), None otherwise (the model holds them)."""
    if trainer is None:
        return None
    if getattr(trainer, "is_deepspeed_enabled", False):
        return dict(trainer.accelerator.get_state_dict(trainer.deepspeed))
    if getattr(trainer, "is_fsdp_enabled", False):
        return dict(trainer.accelerator.get_state_dict(trainer.model))
    return None


def save_checkpoint(out_dir: Path, model, processor, stage: str, params: Params, sections: tuple[str, ...],
                    inputs: dict[str, Path], metrics: dict[str, Any], *, kind: str,
                    models: dict[str, str] | None = None, trainer: Any = None,
                    merge_base: Callable[[], Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """Write the checkpoint, lineage.json and metrics.json into `out_dir` atomically (under `accelerate
    launch`, only the main process writes; sharded weights are gathered first). A LoRA model (peft) is saved
    as its adapter under `adapter/` and, merged into its base, as the checkpoint itself; `merge_base` reloads an
    unquantized base to merge into (QLoRA), else the adapter merges into the model trained."""
    state_dict = _final_state_dict(trainer)
    if not is_main_process():
        return metrics
    with atomic_dir(out_dir) as tmp:
        if hasattr(model, "merge_and_unload"):  # a peft model
            model.save_pretrained(tmp / ADAPTER_DIR)
            model = _merged(model, tmp / ADAPTER_DIR, merge_base)
            state_dict = None
        save_thinker(model, processor, tmp, kind, state_dict=state_dict)
        metrics = {**metrics, "model_id": checkpoint_id(tmp)}
        lineage_models = {**(models or {}), "thinker": metrics["model_id"]}
        write_json(tmp / LINEAGE_FILE, make_lineage(stage, params, sections, inputs, lineage_models))
        write_json(tmp / METRICS_FILE, metrics)
    return metrics


ADAPTER_DIR = "adapter"


def _merged(model: Any, adapter: Path, merge_base: Callable[[], Any] | None) -> Any:
    if merge_base is None:
        return model.merge_and_unload()
    from peft import PeftModel

    return PeftModel.from_pretrained(merge_base(), adapter).merge_and_unload()
