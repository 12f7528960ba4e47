"""The four roles of Think-while-Edit, as interfaces. The loop and the stages know only these."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from editthinker.protocol import Verdict


@dataclass(frozen=True)
class EditRequest:
    source_png: bytes  # the editor always edits the source image
    instruction: str
    seed: int


class Editor(Protocol):
    name: str
    model_id: str

    def edit(self, requests: list[EditRequest]) -> list[bytes]:
        """Edited images (PNG bytes), one per request, same order."""
        ...


@dataclass(frozen=True)
class ThinkRequest:
    """What the thinker sees at turn t > 1: (I_src, I_edit^{t-1}, T_s, T_{t-1}).

    `reference` is privileged information (the target scene) that only an expert may read.
    """

    source_png: bytes
    previous_png: bytes
    original_instruction: str
    previous_instruction: str
    reference: str | None = None


class Thinker(Protocol):
    """The thinker, or the expert playing it: critiques the previous edit and refines the instruction."""

    name: str
    model_id: str

    def think(self, requests: list[ThinkRequest]) -> list[Verdict]: ...


@dataclass(frozen=True)
class JudgeScore:
    semantic: float
    quality: float

    @property
    def overall(self) -> float:
        return (self.semantic * self.quality) ** 0.5


@dataclass(frozen=True)
class ScoreRequest:
    """One edit to score: the source, the edit, the instruction and the privileged reference (the target scene,
    which only an exact judge reads)."""

    source_png: bytes
    edited_png: bytes
    instruction: str
    reference: str | None = None


class Judge(Protocol):
    name: str
    model_id: str

    def score(self, source_png: bytes, edited_png: bytes, instruction: str, reference: str | None) -> JudgeScore: ...

    def score_many(self, requests: list[ScoreRequest]) -> list[JudgeScore]:
        """Scores, one per request, same order (an API judge runs them concurrently); a failure raises."""
        ...
