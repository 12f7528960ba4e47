"""Stop rules of the Think-while-Edit loop, with scripted roles (the loop's logic is what is under test)."""

from dataclasses import dataclass, field

import pytest

from editthinker.loop import STOP_MAX_TURNS, STOP_SATISFIED, STOP_UNCHANGED, EpisodeStart, run_episodes
from editthinker.protocol import format_thinker_answer, parse_thinker_answer
from editthinker.roles import EditRequest, JudgeScore, ThinkRequest


@dataclass
class RecordingEditor:
    name: str = "rec"
    model_id: str = "rec"
    calls: list[EditRequest] = field(default_factory=list)

    def edit(self, requests):
        self.calls.extend(requests)
        return [f"img:{r.instruction}".encode() for r in requests]


@dataclass
class ScriptedThinker:
    """Answers from a script, one raw answer per call, per episode."""

    script: dict[str, list[str]]
    name: str = "scripted"
    model_id: str = "scripted"
    seen: list[ThinkRequest] = field(default_factory=list)

    def think(self, requests):
        self.seen.extend(requests)
        return [parse_thinker_answer(self.script[r.original_instruction].pop(0)) for r in requests]


class ConstJudge:
    name = model_id = "const"

    def score(self, source_png, edited_png, instruction, reference):
        return JudgeScore(5.0, 10.0)


def ans(answer, sem=2, q=9):
    return format_thinker_answer("r", sem, q, answer)


def start(instr):
    return EpisodeStart(instr, b"src", instr, seed=0)


def test_editor_alone_is_one_turn():
    eds = run_episodes([start("a")], RecordingEditor(), None, ConstJudge(), max_turns=5)
    assert len(eds[0].turns) == 1 and eds[0].stop_reason == STOP_MAX_TURNS


def test_stops_when_satisfied_and_when_answer_unchanged():
    thinker = ScriptedThinker({"a": [ans("a2"), ans("a2", sem=9, q=9)], "b": [ans("b2"), ans("B2.")]})
    editor = RecordingEditor()
    eds = run_episodes([start("a"), start("b")], editor, thinker, ConstJudge(), max_turns=5)
    assert [len(e.turns) for e in eds] == [2, 2]
    assert eds[0].stop_reason == STOP_SATISFIED and eds[1].stop_reason == STOP_UNCHANGED
    assert eds[0].final.critique.satisfied


def test_always_reedits_the_source_and_thinker_sees_previous_edit():
    thinker = ScriptedThinker({"a": [ans("a2"), ans("a3"), ans("a4")]})
    editor = RecordingEditor()
    eds = run_episodes([start("a")], editor, thinker, ConstJudge(), max_turns=4)
    assert {c.source_png for c in editor.calls} == {b"src"}
    assert [c.instruction for c in editor.calls] == ["a", "a2", "a3", "a4"]
    assert [s.previous_png for s in thinker.seen] == [b"img:a", b"img:a2", b"img:a3"]
    assert [s.previous_instruction for s in thinker.seen] == ["a", "a2", "a3"]
    assert eds[0].stop_reason == STOP_MAX_TURNS and len(eds[0].turns) == 4


def test_format_failure_is_counted_and_the_loop_goes_on():
    thinker = ScriptedThinker({"a": ["garbage", ans("a2"), ans("a2", sem=9, q=9)]})
    eds = run_episodes([start("a")], RecordingEditor(), thinker, ConstJudge(), max_turns=5)
    e = eds[0]
    assert e.format_failures == 1
    assert [t.instruction for t in e.turns] == ["a", "a2"]
    assert e.stop_reason == STOP_SATISFIED


def test_max_turns_bounds_everything():
    thinker = ScriptedThinker({"a": ["bad"] * 10})
    eds = run_episodes([start("a")], RecordingEditor(), thinker, ConstJudge(), max_turns=3)
    assert eds[0].format_failures == 2 and len(eds[0].turns) == 1 and eds[0].stop_reason == STOP_MAX_TURNS
    with pytest.raises(ValueError):
        run_episodes([start("a")], RecordingEditor(), thinker, ConstJudge(), max_turns=0)
