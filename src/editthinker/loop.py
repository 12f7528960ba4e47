"""The Think-while-Edit loop, run in lockstep over a batch of episodes so model calls batch.

Turn 1 edits the source with the original instruction. At each later turn the thinker sees
(I_src, I_edit^{t-1}, T_s, T_{t-1}) and answers; the editor re-edits the SOURCE with the refined
instruction. An episode stops when the thinker is satisfied, when its answer repeats the previous
instruction, or after `max_turns` turns. An unparsable answer is counted as a format failure; it uses
up its turn and the episode goes on (the thinker is asked again at the next turn). An error of a role (e.g. an
API call that failed after its retries) is raised as it is, never counted as a format failure: faults must not
change the episodes.
The episode's result is its last edit, as in the method's release.

The judge scores each turn's edits in one batch (`Judge.score_many`: an API judge runs it concurrently), on a
worker thread: the thinker's next turn needs the edit, not its score, so the judge's latency overlaps the next
turn's thinker and editor calls instead of adding to them. Batches are scored one after another, in order, and
their scores filled into their turns; a judge failure is raised at the next turn (or at the end), as it is.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
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
    editor: str = ""  # which of several editors edits this episode (run_episodes given a mapping of editors)


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


class _Scorer:
    """Scores batches of turns with the judge on one worker thread, in the order they were submitted."""

    def __init__(self, judge: Judge | None) -> None:
        self.judge = judge
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="judge") if judge is not None else None
        self._pending: list[tuple[list[Turn], Future[list[JudgeScore]]]] = []

    def submit(self, episodes: list[Episode], turns: list[Turn]) -> None:
        if self.judge is None or self._pool is None:
            return
        requests = [
            ScoreRequest(e.start.source_png, t.image_png, e.start.instruction, e.start.reference)
            for e, t in zip(episodes, turns, strict=True)
        ]
        # in the caller's context, so the judge's calls count where the loop's do (usage.usage_scope)
        scoring = self._pool.submit(contextvars.copy_context().run, self.judge.score_many, requests)
        self._pending.append((turns, scoring))

    def collect(self, wait: bool) -> None:
        """Fill in the scores of the finished batches (every batch when `wait`), in order; a failure is raised."""
        while self._pending and (wait or self._pending[0][1].done()):
            turns, future = self._pending.pop(0)
            scores = future.result()
            if len(scores) != len(turns):
                raise RuntimeError(f"the judge gave {len(scores)} scores for {len(turns)} edits")
            for t, s in zip(turns, scores, strict=True):
                t.score = s

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def _edit(editor: Editor | Mapping[str, Editor], items: list[tuple[Episode, str]]) -> list[bytes]:
    """The edits of `items`, in order: one call of each editor with its items."""
    if not isinstance(editor, Mapping):
        return editor.edit([EditRequest(e.start.source_png, instr, e.start.seed) for e, instr in items])
    groups: dict[str, list[int]] = {}
    for k, (e, _) in enumerate(items):
        if e.start.editor not in editor:
            raise KeyError(f"episode {e.start.episode_id}: editor {e.start.editor!r} is not one of {sorted(editor)}")
        groups.setdefault(e.start.editor, []).append(k)
    images: list[bytes] = [b""] * len(items)
    for name, ks in groups.items():
        out = editor[name].edit(
            [EditRequest(items[k][0].start.source_png, items[k][1], items[k][0].start.seed) for k in ks]
        )
        for k, png in zip(ks, out, strict=True):
            images[k] = png
    return images


def _edit_all(editor: Editor | Mapping[str, Editor], scorer: _Scorer, items: list[tuple[Episode, str]],
              turn: int) -> None:  # fmt: skip
    """Edit every item; its batch of edits goes to the judge."""
    images = _edit(editor, items)
    turns = [Turn(turn, instr, png) for (_, instr), png in zip(items, images, strict=True)]
    for (e, _), t in zip(items, turns, strict=True):
        e.turns.append(t)
    scorer.submit([e for e, _ in items], turns)


def run_episodes(
    starts: list[EpisodeStart],
    editor: Editor | Mapping[str, Editor],
    thinker: Thinker | None,
    judge: Judge | None,
    max_turns: int,
    on_turn: Callable[[int], None] | None = None,
) -> list[Episode]:
    """Run the loop for every start. `thinker=None` is the single-turn baseline (editor alone). With a mapping of
    editors, each start's `editor` names its editor: one lockstep batch over several editors, so the thinker's and
    the judge's batches are the whole batch while each editor is called with its own episodes."""
    if max_turns < 1:
        raise ValueError("max_turns must be at least 1")
    episodes = [Episode(s) for s in starts]
    scorer = _Scorer(judge)
    try:
        _run(episodes, editor, thinker, scorer, max_turns, on_turn)
        scorer.collect(wait=True)
    finally:
        scorer.close()
    return episodes


def _run(episodes: list[Episode], editor: Editor | Mapping[str, Editor], thinker: Thinker | None, scorer: _Scorer,
         max_turns: int, on_turn: Callable[[int], None] | None) -> None:  # fmt: skip
    _edit_all(editor, scorer, [(e, e.start.instruction) for e in episodes], 1)
    active = episodes if thinker is not None else []
    for turn in range(2, max_turns + 1):
        scorer.collect(wait=False)  # a judge failure stops the loop here
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
            _edit_all(editor, scorer, to_edit, turn)
        active = still
    for e in episodes:
        e.stop_reason = e.stop_reason or STOP_MAX_TURNS
