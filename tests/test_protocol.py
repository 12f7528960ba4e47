"""The answer parsers: well-formed, missing tags, bad JSON, extra text; the expert's JSON."""

import pytest

from editthinker.protocol import (
    format_expert_answer,
    format_thinker_answer,
    parse_expert_answer,
    parse_thinker_answer,
    same_instruction,
)

GOOD = (
    "<think>the circle is still blue.</think>"
    '<score>{"semantic": 3, "quality": 9}</score>'
    "<answer>recolor the blue circle to red</answer>"
)


def test_well_formed_answer_parses_every_field():
    v = parse_thinker_answer(GOOD)
    assert v.format_ok
    assert (v.reason, v.semantic, v.quality, v.answer) == (
        "the circle is still blue.",
        3.0,
        9.0,
        "recolor the blue circle to red",
    )
    assert not v.satisfied


def test_round_trip_and_stop_threshold():
    raw = format_thinker_answer("fine.", 8, 8.5, "remove the red square")
    v = parse_thinker_answer(raw, stop_semantic=8, stop_quality=8)
    assert v.format_ok and v.satisfied and v.quality == 8.5
    assert not parse_thinker_answer(raw, stop_semantic=9, stop_quality=8).satisfied


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ('<score>{"semantic": 3, "quality": 9}</score><answer>x</answer>', "missing tags: ['think']"),
        ('<think>a</think><score>{"semantic": 3, "quality": 9}</score>', "missing tags: ['answer']"),
        ("<think>a</think><score>{semantic: 3}</score><answer>x</answer>", "score is not JSON"),
        ('<think>a</think><score>{"semantic": 3}</score><answer>x</answer>', "'quality' is missing"),
        ('<think>a</think><score>{"semantic": 11, "quality": 9}</score><answer>x</answer>', "outside 0-10"),
        ('<think>a</think><score>{"semantic": "3", "quality": 9}</score><answer>x</answer>', "not a number"),
        ("<think>a</think><score>[3, 9]</score><answer>x</answer>", "not a JSON object"),
        ('<think>a</think><score>{"semantic": 3, "quality": 9}</score><answer>  </answer>', "empty answer"),
        ("Sure! " + GOOD, "outside them"),
        (GOOD + " hope this helps", "outside them"),
        ('<answer>x</answer><think>a</think><score>{"semantic": 3, "quality": 9}</score>', "out of order"),
        ("", "missing tags"),
    ],
)
def test_bad_answers_are_format_failures_not_exceptions(raw, why):
    v = parse_thinker_answer(raw)
    assert not v.format_ok
    assert why in v.error
    assert v.answer == "" and v.semantic is None


def test_expert_answer_round_trip_and_fence():
    raw = format_expert_answer(False, "still blue.", "recolor the blue circle to red")
    v = parse_expert_answer(raw)
    assert v.format_ok and not v.satisfied and v.answer == "recolor the blue circle to red"
    assert parse_expert_answer("```json\n" + raw + "\n```").answer == v.answer


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("not json", "not JSON"),
        ('{"is_satisfied": "no", "reason": "r", "new_rewritten_prompt": "p"}', "boolean"),
        ('{"is_satisfied": false, "reason": "r", "new_rewritten_prompt": ""}', "no new_rewritten_prompt"),
        ('{"is_satisfied": false, "reason": 3, "new_rewritten_prompt": "p"}', "must be strings"),
    ],
)
def test_bad_expert_answers(raw, why):
    v = parse_expert_answer(raw)
    assert not v.format_ok and why in v.error


def test_same_instruction_ignores_case_spacing_and_final_period():
    assert same_instruction("Remove the red square.", "remove  the red square")
    assert not same_instruction("remove the red square", "remove the red circle")
