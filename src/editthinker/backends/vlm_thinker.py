"""The trained thinker as a role: a transformers VLM checkpoint answering ThinkRequests by greedy decoding."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from editthinker.config import InferenceConfig, ThinkerModelConfig
from editthinker.models.vlm import checkpoint_id, decode_image, load_thinker, thinker_messages
from editthinker.protocol import (
    IMAGE_TOKEN,
    PARSERS,
    RELEASE_PROMPT_TEMPLATE,
    Verdict,
    check_release_template,
    fill_release_prompt,
)
from editthinker.roles import ThinkRequest


def load_prompt_template(path: str | None) -> str:
    """The release prompt template: the file at `path` (params inference.prompt_template), or the built-in one."""
    if path is None:
        return RELEASE_PROMPT_TEMPLATE
    try:
        template = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"inference.prompt_template: cannot read {path}: {exc}") from None
    try:
        check_release_template(template)
    except ValueError as exc:
        raise ValueError(f"inference.prompt_template {path}: {exc}") from None
    return template


def release_messages(prompt: str) -> list[dict]:
    """A filled release prompt as one user message, split on its image tokens as the release's RL loader does:
    an image part for each token, the text between them as text parts (empty ones dropped)."""
    content: list[dict] = []
    for i, text in enumerate(prompt.split(IMAGE_TOKEN)):
        if i:
            content.append({"type": "image"})
        if text:
            content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]


class VLMThinker:
    """Implements the Thinker protocol over a transformers VLM: a checkpoint folder written by the sft or rl
    stage, or a released model id (Qwen2.5-VL, Qwen3-VL), loaded with AutoModelForImageTextToText.

    The prompt is the same one training used (`thinker_messages`), or with `prompt: release` the release's
    template filled in (`release_messages`). Answers are parsed strictly, or with `parse: lenient` as the
    release's reward parser reads them. Unparsable answers come back as Verdicts with `format_ok=False`; they
    are never raised. `format_failures` counts, for every answer parsed so far, the failures under each mode.
    """

    name = "vlm-thinker"

    def __init__(
        self,
        checkpoint: Path | str,
        cfg: ThinkerModelConfig | None = None,
        inference: InferenceConfig | None = None,
        *,
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int | None = None,
        max_new_tokens: int | None = None,
        stop_semantic: float | None = None,
        stop_quality: float | None = None,
    ):
        """Settings come from `cfg` (params.thinker) and `inference` (params.inference); keyword arguments
        override single fields."""
        cfg = cfg or ThinkerModelConfig()
        inference = inference or InferenceConfig()
        # a local folder stays a Path; anything else is a model id for from_pretrained
        self.checkpoint: Path | str = Path(checkpoint) if Path(checkpoint).is_dir() else str(checkpoint)
        self.device = inference.device if device is None else device
        self.dtype = inference.dtype if dtype is None else dtype
        model, processor = load_thinker(self.checkpoint, self.device, self.dtype)
        self.model: Any = model  # a generation-capable VLM (PreTrainedModel types generate loosely)
        self.processor: Any = processor
        self.model_id = checkpoint_id(self.checkpoint)
        self.batch_size = inference.batch_size if batch_size is None else batch_size
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.max_new_tokens = cfg.max_new_tokens if max_new_tokens is None else max_new_tokens
        self.stop_semantic = cfg.stop_semantic if stop_semantic is None else stop_semantic
        self.stop_quality = cfg.stop_quality if stop_quality is None else stop_quality
        self.prompt = inference.prompt
        self.template = load_prompt_template(inference.prompt_template) if inference.prompt == "release" else None
        self.parse = inference.parse
        self.format_failures: dict[str, int] = dict.fromkeys(PARSERS, 0)

    def messages(self, r: ThinkRequest) -> list[dict]:
        if self.template is None:
            return thinker_messages(r.original_instruction, r.previous_instruction)
        return release_messages(fill_release_prompt(self.template, r.original_instruction, r.previous_instruction))

    def generate(self, requests: list[ThinkRequest]) -> list[str]:
        """Raw answers, one per request, decoded greedily in batches."""
        out: list[str] = []
        proc = self.processor
        for i in range(0, len(requests), self.batch_size):
            chunk = requests[i : i + self.batch_size]
            texts = [
                proc.apply_chat_template(self.messages(r), add_generation_prompt=True, tokenize=False) for r in chunk
            ]
            images = [[decode_image(r.source_png), decode_image(r.previous_png)] for r in chunk]
            inputs = proc(text=texts, images=images, padding=True, padding_side="left", return_tensors="pt")
            inputs = inputs.to(self.model.device)  # pixel values are cast to the vision tower's dtype inside
            with torch.inference_mode():
                ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
            new = ids[:, inputs["input_ids"].shape[1] :]
            out += proc.batch_decode(new, skip_special_tokens=True)
        return out

    def think(self, requests: list[ThinkRequest]) -> list[Verdict]:
        out = []
        for raw in self.generate(requests):
            verdicts = {mode: parse(raw, self.stop_semantic, self.stop_quality) for mode, parse in PARSERS.items()}
            for mode, v in verdicts.items():
                self.format_failures[mode] += not v.format_ok
            out.append(verdicts[self.parse])
        return out
