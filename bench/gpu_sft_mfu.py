"""SFT speed of a thinker at the method's size: optimizer steps/s and model FLOPs utilisation (MFU).

A randomly initialised Qwen3-VL (Qwen3VLForConditionalGeneration built from a config: nothing is downloaded)
trains on synthetic batches: two images per sample (the method's I_src and I_edit) and random text token ids
filling the sequence, loss on the text tokens. The vision tower and its mergers are frozen, as in the method;
the language model is fully trained with AdamW (states in the parameters' dtype: bf16 on a GPU, no fp32 master
copy, so an 8B model's weights, gradients and states take ~70 GB). One step is forward + backward + optimizer
step; steps after `--warmup` are timed (torch.cuda.synchronize around the timed span on a GPU).

Model FLOPs per optimizer step (recomputation under --grad-checkpointing is not counted; MFU is model FLOPs):

    LM       6 * N_lm * T  +  12 * L * S * (H * d_head) * T        (PaLM's convention: full S x S attention)
    vision   2 * N_vis_patch * P  +  2 * N_vis_merge * P / m^2  +  4 * L_v * P_img * d_v * P   (forward only: frozen)

with T = batch * seq_len tokens, N_lm the language model's matmul weights (attention and MLP projections of
every layer, plus the LM head, which costs a matmul even when tied to the embedding; the embedding lookup
costs none), L layers, S = seq_len, H query heads of d_head; P patches in the batch (P_img per image), N_vis_patch
the vision tower's matmul weights applied per patch (patch embedding and blocks), N_vis_merge those of the
mergers applied per merged token (m^2 patches), L_v vision blocks of width d_v.
MFU = model FLOPs per second / peak dense bf16 FLOPs per second (`--peak-tflops`, else by GPU name from
PEAK_TFLOPS). Prints one JSON line; `--json OUT` also writes it to a file.

Sizes: `8b` is Qwen3-VL-8B's text config (hidden 4096, 36 layers, 32 heads, 8 KV heads, head 128,
intermediate 12288, vocab 151936, untied head) with its vision tower (27 blocks of width 1152, ~0.58B with
mergers). `4b` and `2b` follow the Qwen3-VL-4B / -2B configs as recalled here (hidden 2560 / 2048, 36 / 28
layers, 32 / 16 heads, 8 KV heads, intermediate 9728 / 6144, tied head, 24-block vision tower of width 1024);
`--dry-run` prints their parameter counts. `tiny` runs on a CPU in seconds, so CI keeps the script working.
On an out-of-memory error the JSON line carries `"error": "out of memory"` and the exit code is 3 (try a
smaller --size, --batch or --seq-len, or --grad-checkpointing).

    python bench/gpu_sft_mfu.py --size 8b --seq-len 4096 --batch 1 --steps 10 --grad-checkpointing --json mfu.json
    python bench/gpu_sft_mfu.py --size tiny --device cpu --steps 2 --peak-tflops 1
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

# dense bf16 peak, TFLOP/s (no sparsity); matched against torch.cuda.get_device_name()
PEAK_TFLOPS = {"H100": 989.0, "H100 PCIE": 756.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0}

QWEN3_VL_IDS = {"image_token_id": 151655, "video_token_id": 151656, "vision_start_token_id": 151652,
                "vision_end_token_id": 151653}  # fmt: skip
VISION_2B_4B = {"depth": 24, "hidden_size": 1024, "intermediate_size": 4096, "num_heads": 16,
                "deepstack_visual_indexes": [5, 11, 17]}  # fmt: skip
VISION_8B = {"depth": 27, "hidden_size": 1152, "intermediate_size": 4304, "num_heads": 16,
             "deepstack_visual_indexes": [8, 16, 24]}  # fmt: skip

SIZES: dict[str, dict[str, Any]] = {
    "tiny": {
        "text": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                 "head_dim": 16, "intermediate_size": 192, "vocab_size": 1024},
        "vision": {"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "patch_size": 8,
                   "deepstack_visual_indexes": [0]},
        "tie": True, "image_side": 32, "seq_len": 64, "ids": {"image_token_id": 1000, "video_token_id": 1001,
                                                             "vision_start_token_id": 1002,
                                                             "vision_end_token_id": 1003},
    },
    "2b": {
        "text": {"hidden_size": 2048, "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8,
                 "head_dim": 128, "intermediate_size": 6144, "vocab_size": 151936},
        "vision": VISION_2B_4B, "tie": True, "image_side": 448, "seq_len": 4096, "ids": QWEN3_VL_IDS,
    },
    "4b": {
        "text": {"hidden_size": 2560, "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8,
                 "head_dim": 128, "intermediate_size": 9728, "vocab_size": 151936},
        "vision": VISION_2B_4B, "tie": True, "image_side": 448, "seq_len": 4096, "ids": QWEN3_VL_IDS,
    },
    "8b": {
        "text": {"hidden_size": 4096, "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8,
                 "head_dim": 128, "intermediate_size": 12288, "vocab_size": 151936},
        "vision": VISION_8B, "tie": False, "image_side": 448, "seq_len": 4096, "ids": QWEN3_VL_IDS,
    },
}  # fmt: skip


def mrope_section(head_dim: int) -> list[int]:
    """Qwen3-VL's (t, h, w) split of the rotary half-dimension: [24, 20, 20] for head 128."""
    half = head_dim // 2
    t = half * 3 // 8
    h = (half - t) // 2
    return [t, h, half - t - h]


def build_config(size: str) -> Qwen3VLConfig:
    spec = SIZES[size]
    text = dict(spec["text"])
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 5_000_000.0, "mrope_interleaved": True,
                               "mrope_section": mrope_section(text["head_dim"])}  # fmt: skip
    text.update(max_position_embeddings=262144, tie_word_embeddings=spec["tie"], rms_norm_eps=1e-6)
    vision = {"patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2, "num_position_embeddings": 2304,
              **spec["vision"], "out_hidden_size": text["hidden_size"]}  # fmt: skip
    if size == "tiny":
        vision["num_position_embeddings"] = (spec["image_side"] // vision["patch_size"]) ** 2
    return Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=spec["tie"], **spec["ids"])


def _linear_weights(module: nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear | nn.Conv3d))


def flop_counts(model: Any, seq_len: int, batch: int, image_side: int) -> dict[str, Any]:
    """Model FLOPs of one optimizer step, by the formula in the module doc."""
    text: Any = model.config.text_config
    vis: Any = model.config.vision_config
    n_lm = _linear_weights(model.model.language_model) + model.lm_head.weight.numel()
    tokens = batch * seq_len
    attn_width = text.num_attention_heads * text.head_dim
    lm = 6 * n_lm * tokens + 12 * text.num_hidden_layers * seq_len * attn_width * tokens
    visual = model.model.visual
    merge_modules = [visual.merger, *visual.deepstack_merger_list]
    n_merge = sum(_linear_weights(m) for m in merge_modules)
    n_patch = _linear_weights(visual) - n_merge
    per_image = (image_side // vis.patch_size) ** 2
    patches = 2 * batch * per_image
    vision = 2 * n_patch * patches + 2 * n_merge * patches // vis.spatial_merge_size**2
    vision += 4 * vis.depth * per_image * vis.hidden_size * patches
    return {"lm_matmul_params": n_lm, "vision_patch_params": n_patch, "vision_merge_params": n_merge,
            "lm_flops_per_step": lm, "vision_flops_per_step": vision, "model_flops_per_step": lm + vision}  # fmt: skip


def synthetic_batch(cfg: Qwen3VLConfig, batch: int, seq_len: int, image_side: int, device: torch.device,
                    dtype: torch.dtype, seed: int) -> dict[str, torch.Tensor]:  # fmt: skip
    """Two images per sample, then random text ids to seq_len; labels on the text only."""
    vis: Any = cfg.vision_config
    text_cfg: Any = cfg.text_config
    if image_side % (vis.patch_size * vis.spatial_merge_size):
        raise ValueError(f"--image-side must be a multiple of {vis.patch_size * vis.spatial_merge_size}")
    grid = image_side // vis.patch_size
    per_image = grid * grid // vis.spatial_merge_size**2
    head = [cfg.vision_start_token_id, *[cfg.image_token_id] * per_image, cfg.vision_end_token_id] * 2
    if seq_len <= len(head) + 1:
        raise ValueError(f"--seq-len must exceed the {len(head)} image tokens (two {image_side}px images)")
    g = torch.Generator().manual_seed(seed)
    low = 0
    high = min(cfg.image_token_id, cfg.vision_start_token_id, text_cfg.vocab_size) - 8
    text = torch.randint(low, high, (batch, seq_len - len(head)), generator=g)
    input_ids = torch.cat([torch.tensor(head).expand(batch, -1), text], dim=1)
    is_image = input_ids == cfg.image_token_id
    labels = input_ids.masked_fill(input_ids >= high, -100)
    patch_dim = vis.in_channels * vis.temporal_patch_size * vis.patch_size**2
    pixel_values = torch.randn(2 * batch * grid * grid, patch_dim, generator=g)
    return {
        "input_ids": input_ids.to(device),
        "labels": labels.to(device),
        "mm_token_type_ids": is_image.int().to(device),
        "pixel_values": pixel_values.to(device, dtype),
        "image_grid_thw": torch.tensor([[1, grid, grid]] * (2 * batch)).to(device),
    }


def peak_tflops(device: torch.device, given: float | None) -> tuple[float | None, str]:
    if given is not None:
        return given, "--peak-tflops"
    if device.type != "cuda":
        return None, "unknown (pass --peak-tflops)"
    name = torch.cuda.get_device_name(device)
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if key in name.upper():
            return PEAK_TFLOPS[key], f"table: {key}"
    return None, f"unknown for {name} (pass --peak-tflops)"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="8b")
    ap.add_argument("--seq-len", type=int, default=None, help="tokens per sample (default: 4096; tiny: 64)")
    ap.add_argument("--batch", type=int, default=1, help="samples per optimizer step")
    ap.add_argument("--steps", type=int, default=10, help="timed optimizer steps")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 3 on a GPU, 1 on a CPU)")
    ap.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda if available)")
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default=None, help="default: bfloat16 on a GPU")
    ap.add_argument("--grad-checkpointing", action="store_true")
    ap.add_argument("--attn", default="sdpa", help="attn_implementation: sdpa, flash_attention_2, eager")
    ap.add_argument("--image-side", type=int, default=None, help="image side in pixels (default: 448; tiny: 32)")
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--peak-tflops", type=float, default=None, help="peak dense TFLOP/s (default: by GPU name)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dry-run", action="store_true", help="build on the meta device, count, do not train")
    ap.add_argument("--json", type=Path, default=None, help="also write the JSON line here")
    return ap.parse_args(argv)


def build_model(cfg: Qwen3VLConfig, device: torch.device, dtype: torch.dtype, attn: str) -> Any:
    cfg._attn_implementation = attn
    with device:
        model = Qwen3VLForConditionalGeneration._from_config(cfg, dtype=dtype)
    return model


def run(args: argparse.Namespace) -> dict[str, Any]:
    spec = SIZES[args.size]
    seq_len = args.seq_len or spec["seq_len"]
    image_side = args.image_side or spec["image_side"]
    cfg = build_config(args.size)
    if args.dry_run:
        model = build_model(cfg, torch.device("meta"), torch.bfloat16, "sdpa")
        counts = flop_counts(model, seq_len, args.batch, image_side)
        total = sum(p.numel() for p in model.parameters())
        vision = sum(p.numel() for p in model.model.visual.parameters())
        return {"size": args.size, "dry_run": True, "params_total": total, "params_vision": vision,
                "params_lm": total - vision, "seq_len": seq_len, "batch": args.batch, **counts}  # fmt: skip
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    warmup = args.warmup if args.warmup is not None else (3 if device.type == "cuda" else 1)
    torch.manual_seed(args.seed)
    model = build_model(cfg, device, dtype, args.attn)
    model.model.visual.requires_grad_(False)  # vision tower and mergers frozen, as in the method
    model.train()
    if args.grad_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    trainable = [p for p in model.parameters() if p.requires_grad]
    fused = device.type == "cuda"
    opt = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=1e-6, fused=fused)
    batch = synthetic_batch(cfg, args.batch, seq_len, image_side, device, dtype, args.seed)
    with torch.no_grad():  # M-RoPE positions once, outside the timed steps (the batch never changes)
        batch["position_ids"], _ = model.model.get_rope_index(
            batch["input_ids"], batch["mm_token_type_ids"], batch["image_grid_thw"]
        )
    counts = flop_counts(model, seq_len, args.batch, image_side)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def step() -> torch.Tensor:
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    losses = []
    for _ in range(warmup):
        losses.append(float(step()))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync()
    t0 = time.perf_counter()
    timed = [step() for _ in range(args.steps)]
    sync()
    wall = time.perf_counter() - t0
    losses += [float(x) for x in timed]
    steps_per_s = args.steps / wall
    achieved = counts["model_flops_per_step"] * steps_per_s / 1e12
    peak, peak_source = peak_tflops(device, args.peak_tflops)
    return {
        "size": args.size,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "attn": args.attn,
        "seq_len": seq_len,
        "batch": args.batch,
        "image_side": image_side,
        "grad_checkpointing": args.grad_checkpointing,
        "steps": args.steps,
        "warmup": warmup,
        "wall_s": wall,
        "steps_per_s": steps_per_s,
        "tokens_per_s": steps_per_s * args.batch * seq_len,
        "tflops_achieved": achieved,
        "peak_tflops": peak,
        "peak_source": peak_source,
        "mfu": achieved / peak if peak else None,
        "params_total": sum(p.numel() for p in model.parameters()),
        "params_trainable": sum(p.numel() for p in trainable),
        **counts,
        "flops_formula": "6*N_lm*T + 12*L*S*H*d_head*T + vision forward (see bench/gpu_sft_mfu.py)",
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
        code = 0 if all(math.isfinite(result[k]) for k in ("loss_first", "loss_last") if k in result) else 4
    except torch.cuda.OutOfMemoryError:
        result, code = {"size": args.size, "seq_len": args.seq_len, "batch": args.batch, "error": "out of memory"}, 3
    line = json.dumps(result, sort_keys=True)
    print(line, flush=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(line + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
