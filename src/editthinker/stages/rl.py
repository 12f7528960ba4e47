"""RL stage: GRPO from the SFT checkpoint (trl GRPOTrainer) with the registered rewards.

Each RL step sample is an image prompt; the thinker samples `num_generations` answers per prompt, and
each answer is scored by format, critic and edit-improvement rewards (rewards.py), weighted by
params.rl.rewards. `rl.batch_size` counts completions per step (prompts x num_generations). The edit reward
sends a batch's re-edits to the editors and the judge as batched, concurrent calls with timeouts; what timed
out or failed is counted in the metrics (`edit_calls`). A rerun with the same inputs and params resumes from
the run's last checkpoint (`restart` starts over). `rl.use_vllm` generates with vLLM (GPU, vllm installed).
With `rl.select` (the default) the stage then validates the RL model against its SFT start on tasks of the
training scenes and ships SFT's weights when RL is below it or malformed (`select`; the choice is in the metrics).
"""

from __future__ import annotations

import gc
import importlib.util
import json
import logging
import math
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from editthinker.config import InferenceConfig, Params, RLParams
from editthinker.images import ImageStore, open_store_for
from editthinker.lineage import verify_checkpoint
from editthinker.models.vlm import kind_of, load_base
from editthinker.outcomes import checkpoint_outcomes
from editthinker.promotion import keep_trained
from editthinker.records import iter_rows
from editthinker.rewards import DIAGNOSTICS, REWARDS, EditCallStats, make_context, trl_reward_func, weights_of
from editthinker.stages import sections_of
from editthinker.storage import write_json
from editthinker.training import (
    METRICS_FILE,
    LogHistory,
    close_work_dir,
    is_main_process,
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

# the step-sample columns the rewards read (they reach the reward functions as keyword arguments)
REWARD_COLUMNS = ("editor", "seed", "source_image", "original_instruction", "previous_instruction", "reference",
                  "target_semantic", "target_quality")  # fmt: skip
log = logging.getLogger(__name__)
EDIT_CALLS_FILE = "edit_calls.json"  # the edit reward's call counts, saved with each checkpoint
# what GRPO logs that tells whether it learns: groups with no reward spread (no gradient), the completions'
# entropy and KL to the SFT start, each reward, and how the thinker reads the previous edit (rewards.DIAGNOSTICS)
SIGNALS = ("frac_reward_zero_std", "reward_std", "entropy", "kl")


class SaveEditCalls(TrainerCallback):
    """Keeps the edit reward's call counts with each checkpoint, so a resumed run counts on from them."""

    def __init__(self, stats: EditCallStats) -> None:
        self.stats = stats

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            (folder / EDIT_CALLS_FILE).write_text(json.dumps(self.stats.as_dict(), sort_keys=True) + "\n")


def vllm_settings(cfg: RLParams) -> dict[str, Any]:
    """trl's vLLM generation settings, when rl.use_vllm asks for them."""
    if not cfg.use_vllm:
        return {}
    if importlib.util.find_spec("vllm") is None:
        raise ValueError("rl.use_vllm: the vllm package is not installed (pip install vllm, on a GPU machine)")
    settings: dict[str, Any] = {"use_vllm": True, "vllm_mode": cfg.vllm_mode}
    if cfg.vllm_mode == "colocate":
        settings["vllm_gpu_memory_utilization"] = cfg.vllm_gpu_memory_utilization
    else:
        settings["vllm_server_base_url"] = cfg.vllm_server_url
    return settings


def run(params: Params, rl_data: Path, sft_checkpoint: Path, out_dir: Path, images: Path | None = None,
        restart: bool = False) -> dict[str, Any]:  # fmt: skip
    """GRPO on the step samples `rl_data`, whose images are in the store `images` (checked to be the one their
    manifest names, before anything is trained; None: `<rl_data>/images`, where an imported dataset keeps it)."""
    images = Path(rl_data) / "images" if images is None else Path(images)
    with output_lock(out_dir):
        verify_checkpoint(Path(sft_checkpoint))  # before the samples are read: fail early
        store = open_store_for(Path(rl_data), Path(images))
        return _run(params, rl_data, sft_checkpoint, out_dir, images, store, restart)


def _run(params: Params, rl_data: Path, sft_checkpoint: Path, out_dir: Path, images: Path, store: ImageStore,
         restart: bool) -> dict[str, Any]:  # fmt: skip
    cfg = params.rl
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    samples = list(iter_rows(Path(rl_data)))
    dataset = thinker_dataset(samples, completion=False, images=store, keep=REWARD_COLUMNS)
    inputs = {"rl_data": Path(rl_data), "sft_checkpoint": Path(sft_checkpoint), "images": Path(images)}
    work = work_dir(Path(out_dir), "rl", run_key("rl", params, sections_of("rl"), inputs))
    quantization = cfg.lora.quantization if cfg.lora else "none"
    remote_code = params.thinker.trust_remote_code
    model, processor = load_base(str(sft_checkpoint), dtype=params.thinker.dtype, trust_remote_code=remote_code,
                                 quantization=quantization)  # fmt: skip
    peft_config = prepare_model(model, cfg)
    model.train()
    ctx = make_context(params, store)
    weights = weights_of(cfg.rewards)
    names = list(REWARDS)
    probes = list(DIAGNOSTICS)  # logged beside the rewards with weight 0: they never move the policy
    args = GRPOConfig(
        **trainer_settings(cfg, "rl", work),
        num_generations=cfg.num_generations,
        beta=cfg.beta,
        temperature=cfg.temperature,
        max_completion_length=cfg.max_completion_length or params.thinker.max_new_tokens,
        reward_weights=[weights[n] for n in names] + [0.0] * len(probes),
        log_completions=False,
        **vllm_settings(cfg),
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[trl_reward_func(n, ctx) for n in names + probes],
        args=args,
        train_dataset=dataset,
        processing_class=processor,
        callbacks=[LogHistory("rl"), SaveEditCalls(ctx.stats)],
        peft_config=peft_config,
    )
    resume = open_work_dir(work, restart)  # after the Trainer: every process of a launch knows its rank
    if resume is not None and (resume / EDIT_CALLS_FILE).is_file():
        ctx.stats.load(json.loads((resume / EDIT_CALLS_FILE).read_text()))
    _, timing = train_timed(trainer, resume, "rl")
    logs = trainer.state.log_history
    rewards = series(logs, "reward")
    metrics = {
        "stage": "rl",
        "samples": len(samples),
        "reward_first": rewards[0] if rewards else None,
        "reward_last": rewards[-1] if rewards else None,
        "reward_curve": rewards,
        **{f"reward_{n}_mean": _mean(series(logs, f"rewards/{n}/mean")) for n in names},
        "learning_signal": learning_signal(logs, names + probes),
        "edit_calls": ctx.stats.as_dict(),
        **timing,
    }
    trained: Any = trainer.model
    trained.eval()
    merge_base = None
    if quantization != "none":
        merge_base = lambda: load_base(str(sft_checkpoint), dtype=params.thinker.dtype,  # noqa: E731
                                       trust_remote_code=remote_code)[0]  # fmt: skip
    kind = kind_of(Path(sft_checkpoint))
    metrics = save_checkpoint(Path(out_dir), trained, processor, "rl", params, sections_of("rl"), inputs,
                              metrics, kind=kind, trainer=trainer, merge_base=merge_base)  # fmt: skip
    if cfg.select is not None and is_main_process():
        del trainer, trained, model  # the validation loads both models from their folders: free the training copy
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        metrics = select(params, Path(sft_checkpoint), Path(out_dir), inputs, metrics, kind)
    close_work_dir(work)
    return metrics


def select(params: Params, sft_checkpoint: Path, out_dir: Path, inputs: dict[str, Path], metrics: dict[str, Any],
           kind: str) -> dict[str, Any]:  # fmt: skip
    """rl.select: the RL checkpoint just written in `out_dir` and its SFT start, on the same validation items
    (`outcomes.checkpoint_outcomes`); the RL one stays unless `promotion.keep_trained` refuses it, and then the SFT
    weights take its place (same lineage inputs, `selection` in the metrics says why)."""
    sel = params.rl.select
    assert sel is not None
    # on the training device and dtype, with the prompt and parser training used (no inference section: it never
    # retrains)
    inference = InferenceConfig(device="cuda" if torch.cuda.is_available() else "cpu", dtype=params.thinker.dtype)
    found = checkpoint_outcomes(params, {"sft": sft_checkpoint, "rl": out_dir}, sel.num_tasks, sel.seed, sel.max_turns,
                       inference)  # fmt: skip
    checks = keep_trained(found["rl"]["items"], found["sft"]["items"], sel.metric, 0.95, sel.max_format_failure_rate)
    kept = all(c.passed for c in checks)
    brief = ("success_rate", "overall", "format_failure_rate", "satisfied_on_failed")
    selection = {
        "kept": "rl" if kept else "sft",
        "reasons": [c.reason for c in checks],
        "trained_model_id": metrics["model_id"],  # the RL model, whichever is kept
        "validation": {"num_tasks": sel.num_tasks, "seed": sel.seed, "max_turns": sel.max_turns, "partition": "train",
                       **{name: {k: found[name]["summary"][k] for k in brief} for name in ("sft", "rl")}},
    }  # fmt: skip
    metrics = {**metrics, "selection": selection}
    log.info("rl.select: kept %s (%s)", selection["kept"], "; ".join(selection["reasons"]))
    if kept:
        write_json(out_dir / METRICS_FILE, metrics)  # descriptive: not part of the checksums
        return metrics
    model, processor = load_base(str(sft_checkpoint), dtype=params.thinker.dtype,
                                 trust_remote_code=params.thinker.trust_remote_code)  # fmt: skip
    return save_checkpoint(out_dir, model, processor, "rl", params, sections_of("rl"), inputs, metrics, kind=kind)


def _mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if not math.isnan(x)]  # a step where a diagnostic applied to no sample: None (dropped by
    # `series`) from trl, NaN from a logger that averages without skipping
    return sum(xs) / len(xs) if xs else None


def learning_signal(logs: list[dict[str, float]], rewards: list[str]) -> dict[str, dict[str, float | None]]:
    """Each of SIGNALS and each reward / diagnostic mean, averaged over the first and the last quarter of the
    logged steps: whether groups still had reward spread, whether the policy collapsed or drifted from SFT,
    which reward moved, and whether the thinker learned to see failed edits."""
    out: dict[str, dict[str, float | None]] = {}
    for key in [*SIGNALS, *(f"rewards/{n}/mean" for n in rewards)]:
        xs = series(logs, key)
        q = max(1, len(xs) // 4)
        out[key] = {"first": _mean(xs[:q]), "last": _mean(xs[-q:])}
    return out
