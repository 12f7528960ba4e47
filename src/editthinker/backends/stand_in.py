"""A stand-in editor for tests and benchmarks ONLY: it does not edit, it applies a seeded colour transform.

It exists so that generation over real (non-synthetic) images can be tested and benchmarked offline and fast,
without a diffusion model. Its output depends only on the source image, the instruction and the seed (a
per-channel gain and offset drawn from their hash), so runs are deterministic; its "edits" carry no meaning and
must never stand for an editor's quality. Declare it with `kind: stand-in` in params `editors`.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
from PIL import Image

from editthinker.roles import EditRequest

MODEL_ID = "stand-in/seeded-colour-transform-v1"


class StandInEditor:
    """Editor protocol: `edit(requests) -> PNG bytes`, a seeded colour transform of each source image."""

    def __init__(self, name: str, compress_level: int = 1) -> None:
        self.name = name
        self.model_id = MODEL_ID
        self.compress_level = compress_level

    @staticmethod
    def transform(instruction: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """The per-channel (gain, offset) of an instruction and seed."""
        digest = hashlib.sha256(f"{seed}\x1f{instruction}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "big"))
        return rng.uniform(0.8, 1.2, 3).astype(np.float32), rng.uniform(-24, 24, 3).astype(np.float32)

    def _edit_one(self, req: EditRequest) -> bytes:
        with Image.open(io.BytesIO(req.source_png)) as img:
            pixels = np.asarray(img.convert("RGB"), dtype=np.float32)
        gain, offset = self.transform(req.instruction, req.seed)
        out = np.clip(pixels * gain + offset, 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(out).save(buf, format="PNG", compress_level=self.compress_level)
        return buf.getvalue()

    def edit(self, requests: list[EditRequest]) -> list[bytes]:
        return [self._edit_one(r) for r in requests]
