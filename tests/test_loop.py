"""Stop rules of the Think-while-Edit loop, with scripted roles (the loop's logic is what is under test)."""

from dataclasses import dataclass, field

import pytest

from editthinker.loop import STOP_MAX_TURNS, STOP_SATISFIED, STOP_UNCHANGED, EpisodeStart, run_episodes
from editthinker.protocol import format_thinker_answer, parse_thinker_answer
from editthinker.roles import EditRequest, JudgeScore, ScoreRequest, ThinkRequest


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

    def score_many(self, requests):
        return [self.score(r.source_png, r.edited_png, r.instruction, r.reference) for r in requests]


@dataclass
class BatchJudge:
    """Scores an edit by its image's length; records each batch it is given."""

    name: str = "batch"
    model_id: str = "batch"
    batches: list[list[ScoreRequest]] = field(default_factory=list)

    def score(self, source_png, edited_png, instruction, reference):
        return JudgeScore(float(len(edited_png) % 11), 9.0)

    def score_many(self, requests):
        self.batches.append(list(requests))
        return [self.score(r.source_png, r.edited_png, r.instruction, r.reference) for r in requests]


class FailingJudge(ConstJudge):
    def score_many(self, requests):
        raise RuntimeError("judge down")


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


def test_the_judge_scores_each_turn_in_one_batch_in_order():
    thinker = ScriptedThinker({"a": [ans("a-longer")], "bb": [ans("bb", sem=9, q=9)], "c": [ans("c-much-longer")]})
    judge = BatchJudge()
    eds = run_episodes([start("a"), start("bb"), start("c")], RecordingEditor(), thinker, judge, max_turns=2)
    assert [len(b) for b in judge.batches] == [3, 2]  # turn 1: every episode; turn 2: the two re-edited
    assert [r.edited_png for r in judge.batches[1]] == [b"img:a-longer", b"img:c-much-longer"]
    for e in eds:
        for t in e.turns:
            assert t.score == judge.score(b"src", t.image_png, e.start.instruction, None)
    assert {e.turns[-1].score.semantic for e in eds} == {len(b"img:a-longer") % 11, len(b"img:bb") % 11,
                                                         len(b"img:c-much-longer") % 11}  # fmt: skip


def test_a_judge_failure_raises_and_is_no_format_failure():
    with pytest.raises(RuntimeError, match="judge down"):
        run_episodes([start("a")], RecordingEditor(), None, FailingJudge(), max_turns=1)


def test_one_lockstep_batch_over_several_editors():
    """With a mapping of editors each episode goes to its own editor, one call per editor per turn, while the
    thinker and the judge see the whole batch; the episodes are those of one editor at a time."""
    script = {"a": [ans("a2")], "b": [ans("b2")], "c": [ans("c", sem=9, q=9)]}
    thinker = ScriptedThinker({k: list(v) for k, v in script.items()})
    editors = {"p": RecordingEditor("p"), "q": RecordingEditor("q")}
    judge = BatchJudge()
    starts = [EpisodeStart(i, b"src", i, 0, editor=ed) for i, ed in (("a", "p"), ("b", "q"), ("c", "p"))]
    eds = run_episodes(starts, editors, thinker, judge, max_turns=2)
    assert [c.instruction for c in editors["p"].calls] == ["a", "c", "a2"]
    assert [c.instruction for c in editors["q"].calls] == ["b", "b2"]
    assert [len(b) for b in judge.batches] == [3, 2] and len(thinker.seen) == 3
    alone = [run_episodes([s], editors[s.editor], ScriptedThinker({s.instruction: list(script[s.instruction])}),
                          BatchJudge(), max_turns=2)[0] for s in starts]  # fmt: skip
    assert [[(t.instruction, t.image_png, t.score) for t in e.turns] for e in eds] == [
        [(t.instruction, t.image_png, t.score) for t in e.turns] for e in alone
    ]
    with pytest.raises(KeyError, match="editor 'z'"):
        run_episodes([EpisodeStart("x", b"src", "x", 0, editor="z")], editors, None, None, max_turns=1)
