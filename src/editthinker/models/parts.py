"""The three parts of an image-text-to-text model that training can freeze or adapt: the vision tower, the
projector (vision features -> language embeddings) and the language model (with its embeddings and head).

Found by parameter and module names, per family: Qwen2.5-VL `model.visual.*` with its `merger` as the projector;
Qwen3-VL the same plus the deepstack mergers; LLaVA-style models `vision_tower` / `multi_modal_projector`.
Everything else is the language model. A model where a part cannot be found is an error when that part is
asked for, never a silent no-op.
"""

from __future__ import annotations

import re

from torch import nn

PARTS = ("vision_tower", "projector", "language_model")

# first match wins: a projector lives inside Qwen's `visual` module
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "projector",
        re.compile(r"(^|\.)(visual\.(merger|deepstack_merger_list)|multi_modal_projector|mm_projector)(\.|$)"),
    ),
    ("vision_tower", re.compile(r"(^|\.)(visual|vision_tower|vision_model|vision_encoder)(\.|$)")),
)


def part_of(name: str) -> str:
    """The part a parameter or module name belongs to."""
    for part, pattern in _PATTERNS:
        if pattern.search(name):
            return part
    return "language_model"


def parameter_parts(model: nn.Module) -> dict[str, list[str]]:
    """Parameter names by part (every part present, possibly empty)."""
    out: dict[str, list[str]] = {p: [] for p in PARTS}
    for name, _ in model.named_parameters():
        out[part_of(name)].append(name)
    return out


def freeze(model: nn.Module, parts: set[str]) -> dict[str, int]:
    """Set requires_grad=False on every parameter of `parts`; the number of values frozen per part."""
    unknown = parts - set(PARTS)
    if unknown:
        raise ValueError(f"unknown model parts {sorted(unknown)}; parts: {list(PARTS)}")
    found = parameter_parts(model)
    params = dict(model.named_parameters())
    counts: dict[str, int] = {}
    for part in sorted(parts):
        if not found[part]:
            raise ValueError(f"{type(model).__name__} has no {part} parameters to freeze (no module named as one)")
        for name in found[part]:
            params[name].requires_grad_(False)
        counts[part] = sum(params[n].numel() for n in found[part])
    return counts


def lora_target_names(model: nn.Module, targets: list[str], trainable_parts: set[str]) -> list[str]:
    """Full names of the linear layers whose last name is in `targets` and whose part trains: the modules LoRA
    adapts (peft matches each name exactly, so a vision block's `gate_proj` stays out when the tower is frozen)."""
    wanted = set(targets)
    names = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in wanted and part_of(name) in trainable_parts
    ]
    if not names:
        raise ValueError(
            f"lora.target_modules {sorted(wanted)} match no linear layer of {type(model).__name__} in the parts that "
            f"train ({sorted(trainable_parts)})"
        )
    return names
