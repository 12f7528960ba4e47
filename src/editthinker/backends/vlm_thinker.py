"""The trained thinker as a role: a transformers VLM checkpoint answering ThinkRequests by greedy decoding."""

from __future__ import annotations

from pathlib import Path

import torch

from editthinker.models.tiny_vlm import checkpoint_id, decode_image, load_thinker, thinker_messages
from editthinker.protocol import Verdict, parse_thinker_answer
from editthinker.roles import ThinkRequest


class VLMThinker:
    """Implements the Thinker protocol over a checkpoint directory written by the sft or rl stage.

    The prompt is the same one training used (`thinker_messages`). Unparsable answers come back as
    Verdicts with `format_ok=False`; they are never raised.
    """

    name = "vlm-thinker"

    def __init__(self, checkpoint: Path, batch_size: int = 16, max_new_tokens: int = 96,
                 stop_semantic: float = 8.0, stop_quality: float = 8.0):  # fmt: skip
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.checkpoint = Path(checkpoint)
        self.model, self.processor = load_thinker(self.checkpoint)
        self.model_id = checkpoint_id(self.checkpoint)
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.stop_semantic = stop_semantic
        self.stop_quality = stop_quality

    def generate(self, requests: list[ThinkRequest]) -> list[str]:
        """Raw answers, one per request, decoded greedily in batches."""
        out: list[str] = []
        proc = self.processor
        for i in range(0, len(requests), self.batch_size):
            chunk = requests[i : i + self.batch_size]
            texts = [
                proc.apply_chat_template(thinker_messages(r.original_instruction, r.previous_instruction),
                                         add_generation_prompt=True, tokenize=False)  # fmt: skip
                for r in chunk
            ]
            images = [[decode_image(r.source_png), decode_image(r.previous_png)] for r in chunk]
            inputs = proc(text=texts, images=images, padding=True, padding_side="left", return_tensors="pt")
            with torch.inference_mode():
                ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
            new = ids[:, inputs["input_ids"].shape[1] :]
            out += proc.batch_decode(new, skip_special_tokens=True)
        return out

    def think(self, requests: list[ThinkRequest]) -> list[Verdict]:
        return [parse_thinker_answer(raw, self.stop_semantic, self.stop_quality) for raw in self.generate(requests)]
