"""RL stage: GRPO from the SFT checkpoint (trl GRPOTrainer, CPU) with the registered rewards.

Each RL step sample is an image prompt; the thinker samples `num_generations` answers per prompt, and
each answer is scored by format, critic and edit-improvement rewards (rewards.py), weighted by
params.rl.rewards. `rl.batch_size` counts completions per step (prompts x num_generations).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from trl import GRPOConfig, GRPOTrainer

from editthinker.config import Params
from editthinker.lineage import verify_checkpoint
from editthinker.models.vlm import load_thinker
from editthinker.records import iter_rows
from editthinker.rewards import REWARDS, make_context, trl_reward_func, weights_of
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

# the step-sample columns the rewards read (they reach the reward functions as keyword arguments)
REWARD_COLUMNS = ("editor", "seed", "source_png", "original_instruction", "previous_instruction", "target_scene",
                  "target_semantic", "target_quality")  # fmt: skip


def run(params: Params, rl_data: Path, sft_checkpoint: Path, out_dir: Path) -> dict[str, Any]:
    with output_lock(out_dir):
        verify_checkpoint(Path(sft_checkpoint))  # before the samples are read: fail early
        return _run(params, rl_data, sft_checkpoint, out_dir)


def _run(params: Params, rl_data: Path, sft_checkpoint: Path, out_dir: Path) -> dict[str, Any]:
    cfg = params.rl
    if cfg.batch_size % cfg.num_generations:
        raise ValueError(f"rl.batch_size ({cfg.batch_size}) must be a multiple of rl.num_generations")
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    samples = list(iter_rows(Path(rl_data)))
    dataset = thinker_dataset(samples, completion=False, keep=REWARD_COLUMNS)
    model, processor = load_thinker(Path(sft_checkpoint))
    model.train()
    ctx = make_context(params)
    weights = weights_of(cfg.rewards)
    names = list(REWARDS)
    history = LogHistory("rl")
    with tempfile.TemporaryDirectory(prefix="rl-") as work:
        args = GRPOConfig(
            output_dir=work,
            max_steps=cfg.max_steps,
            per_device_train_batch_size=cfg.batch_size,
            num_generations=cfg.num_generations,
            learning_rate=cfg.learning_rate,
            beta=cfg.beta,
            temperature=cfg.temperature,
            max_completion_length=params.thinker.max_new_tokens,
            reward_weights=[weights[n] for n in names],
            seed=cfg.seed,
            data_seed=cfg.seed,
            **run_settings(),
            log_completions=False,
            dataloader_num_workers=0,
        )
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[trl_reward_func(n, ctx) for n in names],
            args=args,
            train_dataset=dataset,
            processing_class=processor,
            callbacks=[history],
        )
        _, timing = train_timed(trainer, "rl")
    rewards = series(history.logs, "reward")
    metrics = {
        "stage": "rl",
        "samples": len(samples),
        "reward_first": rewards[0] if rewards else None,
        "reward_last": rewards[-1] if rewards else None,
        "reward_curve": rewards,
        **{f"reward_{n}_mean": _mean(series(history.logs, f"rewards/{n}/mean")) for n in names},
        **timing,
    }
    model.eval()
    return save_checkpoint(Path(out_dir), trainer.model, processor, "rl", params, sections_of("rl"),
                           {"rl_data": Path(rl_data), "sft_checkpoint": Path(sft_checkpoint)}, metrics)  # fmt: skip


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None
