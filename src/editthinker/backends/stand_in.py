"""Stand-in roles for tests and benchmarks ONLY: an editor, an expert and a judge that do no real work.

They exist so that generation over real (non-synthetic) images can be tested and benchmarked offline and fast,
in this process, without a diffusion model or an API. Their outputs carry no meaning and must never stand for an
editor's, an expert's or a judge's quality:

- `StandInEditor` (`kind: stand-in` in params `editors`) does not edit, it applies a seeded colour transform: a
  per-channel gain and offset drawn from the hash of the instruction and the seed, so runs are deterministic.
- `StandInExpert` (`expert.kind: stand-in`) asks for one rewrite of the original instruction, then is satisfied
  (what the stub API server of the tests answers); it reads no pixels and no privileged reference.
- `StandInJudge` (`judge.kind: stand-in`) gives VIEScore-shaped scores (0-10 integers; SC and PQ the minimum of
  two each) drawn from the sha256 of the source image, the edit and the instruction.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
from PIL import Image

from editthinker.protocol import Verdict, format_expert_answer, parse_expert_answer
from editthinker.roles import EditRequest, JudgeScore, ScoreRequest, ThinkRequest

MODEL_ID = "stand-in/seeded-colour-transform-v1"
EXPERT_MODEL_ID = "stand-in/expert-rewrite-once-v1"
JUDGE_MODEL_ID = "stand-in/judge-hashed-scores-v1"


class StandInEditor:
    """Editor protocol: `edit(requests) -> PNG bytes`, a seeded colour transform of each source image."""

    thread_safe = True  # calls may come from several threads at once (inflight.shared)

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

    @classmethod
    def lookup_table(cls, instruction: str, seed: int) -> list[int]:
        """The transform as a PIL lookup table (256 values per channel): clip(value * gain + offset), truncated to
        uint8, computed in float32 for every possible value, so applying it equals the transform pixel by pixel."""
        gain, offset = cls.transform(instruction, seed)
        values = np.arange(256, dtype=np.float32)[:, None]
        return np.clip(values * gain + offset, 0, 255).astype(np.uint8).T.ravel().tolist()

    def _edit_one(self, req: EditRequest) -> bytes:
        with Image.open(io.BytesIO(req.source_png)) as img:
            rgb = img.convert("RGB")
        out = rgb.point(self.lookup_table(req.instruction, req.seed))
        buf = io.BytesIO()
        out.save(buf, format="PNG", compress_level=self.compress_level)
        return buf.getvalue()

    def edit(self, requests: list[EditRequest]) -> list[bytes]:
        return [self._edit_one(r) for r in requests]


class StandInExpert:
    """Thinker protocol, playing the expert: not satisfied with the first edit (it asks for the original
    instruction ", exactly as asked"), satisfied with any later one. Tests and benchmarks only."""

    thread_safe = True  # calls may come from several threads at once (inflight.shared)

    name = "stand-in-expert"
    model_id = EXPERT_MODEL_ID

    @staticmethod
    def _answer(req: ThinkRequest) -> str:
        if req.previous_instruction == req.original_instruction:
            return format_expert_answer(False, "not yet", f"{req.original_instruction}, exactly as asked")
        return format_expert_answer(True, "done", req.previous_instruction)

    def think(self, requests: list[ThinkRequest]) -> list[Verdict]:
        return [parse_expert_answer(self._answer(r)) for r in requests]


class StandInJudge:
    """Judge protocol: VIEScore-shaped scores from the sha256 of what it is shown. Tests and benchmarks only."""

    thread_safe = True  # calls may come from several threads at once (inflight.shared)

    name = "stand-in-judge"
    model_id = JUDGE_MODEL_ID

    def score(self, source_png: bytes, edited_png: bytes, instruction: str, reference: str | None) -> JudgeScore:
        h = hashlib.sha256()
        for part in (source_png, edited_png, instruction.encode()):
            h.update(hashlib.sha256(part).digest())
        d = h.digest()
        success, over_editing, naturalness, artifacts = (d[i] % 11 for i in range(4))
        return JudgeScore(float(min(success, over_editing)), float(min(naturalness, artifacts)))

    def score_many(self, requests: list[ScoreRequest]) -> list[JudgeScore]:
        return [self.score(r.source_png, r.edited_png, r.instruction, r.reference) for r in requests]
