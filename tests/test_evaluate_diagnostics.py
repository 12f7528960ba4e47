"""evaluate's diagnostics of the thinker: how often it calls a failed edit satisfied (it must look at the image to
know) and rewrites a successful one, with the judge's score of the same image as the truth."""

from __future__ import annotations

from editthinker.config import Params
from editthinker.loop import Episode, EpisodeStart, Turn
from editthinker.outcomes import critique_accuracy, summarise
from editthinker.protocol import Verdict
from editthinker.roles import JudgeScore


def turn(n: int, semantic: float, satisfied: bool | None, format_ok: bool = True) -> Turn:
    critique = None if satisfied is None else Verdict("raw", format_ok, satisfied=satisfied)
    return Turn(n, "do it", b"png", JudgeScore(semantic, 9.0), critique)


def episode(*turns: Turn) -> Episode:
    return Episode(EpisodeStart("t", b"png", "do it", 0), list(turns))


def test_counts_by_hand() -> None:
    episodes = [
        episode(turn(1, 3.0, True)),  # failed, called satisfied
        episode(turn(1, 3.0, False), turn(2, 9.0, True)),  # failed, rewritten; then success, satisfied
        episode(turn(1, 9.0, False), turn(2, 9.0, None)),  # success rewritten anyway; last turn not critiqued
        episode(turn(1, 2.0, True, format_ok=False)),  # an unparsable answer says nothing
    ]
    acc = critique_accuracy(episodes, Params())
    assert acc == {"satisfied_on_failed": 1 / 2, "rewrote_on_success": 1 / 2}
    m = summarise(episodes, Params())
    assert m["satisfied_on_failed"] == 0.5 and m["format_failure_rate"] == 0.0  # format_failures counted by loop


def test_none_without_critiques() -> None:
    assert critique_accuracy([episode(turn(1, 3.0, None))], Params()) == {
        "satisfied_on_failed": None,
        "rewrote_on_success": None,
    }
