"""The Think-while-Edit loop, run in lockstep over a batch of episodes so model calls batch.

Turn 1 edits the source with the original instruction. At each later turn the thinker sees
(I_src, I_edit^{t-1}, T_s, T_{t-1}) and answers; the editor re-edits the SOURCE with the refined
instruction. An episode stops when the thinker is satisfied, when its answer repeats the previous
instruction, or after `max_turns` turns. An unparsable answer is counted as a format failure; it uses
up its turn and the episode goes on (the thinker is asked again at the next turn). An error of a role (e.g. an
API call that failed after its retries) is raised as it is, never counted as a format failure: faults must not
change the episodes.
The episode's result is its last edit, as in the method's release.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from editthinker.protocol import Verdict, same_instruction
from editthinker.roles import Editor, EditRequest, Judge, JudgeScore, ScoreRequest, Thinker, ThinkRequest

STOP_SATISFIED, STOP_UNCHANGED, STOP_MAX_TURNS = "satisfied", "unchanged", "max_turns"


@dataclass(frozen=True)
class EpisodeStart:
    episode_id: str
    source_png: bytes
    instruction: str
    seed: int
    reference: str | None = None  # privileged target, read only by an expert and an exact judge


@dataclass
class Turn:
    turn: int
    instruction: str
    image_png: bytes
    score: JudgeScore | None = None
    critique: Verdict | None = None  # the thinker's verdict on this turn's image, if it was asked


@dataclass
class Episode:
    start: EpisodeStart
    turns: list[Turn] = field(default_factory=list)
    format_failures: int = 0
    stop_reason: str = ""

    @property
    def final(self) -> Turn:
        return self.turns[-1]


def _edit_all(editor: Editor, judge: Judge | None, items: list[tuple[Episode, str]], turn: int) -> None:
    """Edit every item, then score the whole batch of edits in one judge call (an API judge runs it concurrently)."""
    images = editor.edit([EditRequest(e.start.source_png, instr, e.start.seed) for e, instr in items])
    scores: list[JudgeScore | None] = [None] * len(items)
    if judge is not None:
        requests = [
            ScoreRequest(e.start.source_png, png, e.start.instruction, e.start.reference)
            for (e, _), png in zip(items, images, strict=True)
        ]
        scores = list(judge.score_many(requests))
        if len(scores) != len(items):
            raise RuntimeError(f"judge {judge.name}: {len(scores)} scores for {len(items)} edits")
    for (e, instr), png, score in zip(items, images, scores, strict=True):
        e.turns.append(Turn(turn, instr, png, score))


def run_episodes(
    starts: list[EpisodeStart],
    editor: Editor,
    thinker: Thinker | None,
    judge: Judge | None,
    max_turns: int,
    on_turn: Callable[[int], None] | None = None,
) -> list[Episode]:
    """Run the loop for every start. `thinker=None` is the single-turn baseline (editor alone)."""
    if max_turns < 1:
        raise ValueError("max_turns must be at least 1")
    episodes = [Episode(s) for s in starts]
    _edit_all(editor, judge, [(e, e.start.instruction) for e in episodes], 1)
    active = episodes if thinker is not None else []
    for turn in range(2, max_turns + 1):
        if on_turn:
            on_turn(turn)
        if not active:
            break
        assert thinker is not None
        verdicts = thinker.think(
            [
                ThinkRequest(
                    e.start.source_png, e.final.image_png, e.start.instruction, e.final.instruction, e.start.reference
                )
                for e in active
            ]
        )
        to_edit: list[tuple[Episode, str]] = []
        still: list[Episode] = []
        for e, v in zip(active, verdicts, strict=True):
            e.final.critique = v
            if not v.format_ok:
                e.format_failures += 1
                still.append(e)
            elif v.satisfied:
                e.stop_reason = STOP_SATISFIED
            elif same_instruction(v.answer, e.final.instruction):
                e.stop_reason = STOP_UNCHANGED
            else:
                to_edit.append((e, v.answer))
                still.append(e)
        if to_edit:
            _edit_all(editor, judge, to_edit, turn)
        active = still
    for e in episodes:
        e.stop_reason = e.stop_reason or STOP_MAX_TURNS
    return episodes
