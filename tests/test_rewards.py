"""The GRPO rewards on hand-built step samples: no model involved."""

from __future__ import annotations

import pytest

from editthinker.backends.synthetic import SyntheticJudge
from editthinker.config import Params, RewardWeights
from editthinker.images import ImageBytes
from editthinker.protocol import format_thinker_answer
from editthinker.rewards import (
    NEUTRAL_EDIT,
    REWARDS,
    critic_reward,
    edit_reward,
    format_reward,
    get_reward,
    make_context,
    total_reward,
    trl_reward_func,
)
from editthinker.roles import EditRequest
from editthinker.world.scene import render_png
from editthinker.world.tasks import canonical_instruction, make_task

SIZE = 64
PARAMS = Params()
IMAGES = ImageBytes()  # the images the samples refer to, by hash
CTX = make_context(PARAMS, IMAGES)


def _task(op: str):
    """The first paraphrased task of the test world whose edit is `op`."""
    for i in range(200):
        t = make_task(99, i, 2, 4, {"paraphrase": 1.0})
        if t.op.op == op:
            return t
    raise AssertionError(f"no {op} task found")


def _sample(task, previous_png: bytes, previous_instruction: str, seed: int = 0) -> dict:
    src = render_png(task.source, SIZE)
    s = SyntheticJudge().score(src, previous_png, task.instruction, task.target.to_json())
    return {
        "editor": "painter",
        "seed": seed,
        "source_image": IMAGES.add(src),
        "original_instruction": task.instruction,
        "previous_instruction": previous_instruction,
        "reference": task.target.to_json(),
        "target_semantic": s.semantic,
        "target_quality": s.quality,
    }


def _clean_seed(task) -> int:
    """An editor seed at which the painter carries out the task's canonical instruction exactly (no slip), so a
    canonical rewrite earns the full edit reward whatever the world draws."""
    editor = CTX.editors["painter"]
    src = render_png(task.source, SIZE)
    target = render_png(task.target, SIZE)
    for seed in range(100):
        if editor.edit([EditRequest(src, canonical_instruction(task.op), seed)])[0] == target:
            return seed
    raise AssertionError("the painter slips at every seed")


GOOD = format_thinker_answer("the edit matches the instruction.", 10, 10, "recolor the red circle to blue")


def test_registry_names_and_lookup():
    assert set(REWARDS) == {"format", "critic", "edit"}
    assert get_reward("critic") is critic_reward
    with pytest.raises(KeyError, match="unknown reward"):
        get_reward("nope")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (GOOD, 1.0),
        ("<think>x</think><answer>recolor the red circle to blue</answer>", 0.0),  # missing score
        ('<think>x</think><score>{"semantic": 4, quality: 2}</score><answer>a</answer>', 0.0),  # bad JSON
        ('<think>x</think><score>{"semantic": 4, "quality": 12}</score><answer>a</answer>', 0.0),  # out of range
        ("recolor the red circle to blue", 0.0),
    ],
)
def test_format_reward(raw, expected):
    assert format_reward(raw, {}, CTX) == expected


def test_critic_reward_is_exact_and_scaled():
    sample = {"target_semantic": 7.0, "target_quality": 10.0}
    exact = format_thinker_answer("r", 7, 10, "a")
    off = format_thinker_answer("r", 4, 8, "a")  # |7-4| + |10-8| = 5
    assert critic_reward(exact, sample, CTX) == 1.0
    assert critic_reward(off, sample, CTX) == pytest.approx(1 - 5 / 20)
    assert critic_reward(format_thinker_answer("r", 0, 0, "a"), {"target_semantic": 10, "target_quality": 10}, CTX) == 0
    assert critic_reward("<think>r</think>", sample, CTX) == 0.0


def test_edit_reward_positive_for_a_correct_canonical_rewrite():
    task = _task("recolor")
    unchanged = render_png(task.source, SIZE)  # the previous edit did nothing: semantic 0
    sample = _sample(task, unchanged, task.instruction, seed=_clean_seed(task))
    assert sample["target_semantic"] == 0.0
    answer = format_thinker_answer("nothing changed.", 0, 10, canonical_instruction(task.op))
    assert edit_reward(answer, sample, CTX) == pytest.approx(1.0)


def test_edit_reward_negative_when_the_rewrite_makes_things_worse():
    task = _task("recolor")
    perfect = render_png(task.target, SIZE)
    sample = _sample(task, perfect, task.instruction, seed=3)
    assert sample["target_semantic"] == 10.0
    other = "gray" if task.source.background == "white" else "white"
    worse = format_thinker_answer("the edit matches the instruction.", 3, 10, f"change the background to {other}")
    assert edit_reward(worse, sample, CTX) < 0


def test_edit_reward_zero_when_the_answer_stops_the_loop_and_neutral_when_unparsable():
    task = _task("remove")
    sample = _sample(task, render_png(task.source, SIZE), task.instruction, seed=1)
    same = format_thinker_answer("no change.", 0, 10, task.instruction.upper() + ".")  # same instruction: stop
    satisfied = format_thinker_answer("looks right.", 9, 9, canonical_instruction(task.op))  # above the stop bar
    assert edit_reward(same, sample, CTX) == 0.0
    assert edit_reward(satisfied, sample, CTX) == 0.0
    assert edit_reward("<answer>remove it</answer>", sample, CTX) == NEUTRAL_EDIT
    bad_editor = {**sample, "editor": "nobody"}
    with pytest.raises(KeyError, match="nobody"):
        edit_reward(format_thinker_answer("r", 0, 10, canonical_instruction(task.op)), bad_editor, CTX)


def test_edit_reward_overall_metric_uses_quality_too():
    task = _task("recolor")
    sample = _sample(task, render_png(task.source, SIZE), task.instruction, seed=_clean_seed(task))
    ctx = make_context(Params.model_validate({"rl": {"edit_metric": "overall"}}), IMAGES)
    answer = format_thinker_answer("r", 0, 10, canonical_instruction(task.op))
    assert ctx.edit_metric == "overall"
    assert edit_reward(answer, sample, ctx) == pytest.approx(1.0)  # sqrt(10*10) - sqrt(0*10)


def test_total_reward_is_the_weighted_sum():
    task = _task("recolor")
    sample = _sample(task, render_png(task.source, SIZE), task.instruction, seed=3)
    answer = format_thinker_answer("r", 2, 9, canonical_instruction(task.op))
    w = RewardWeights(format=0.2, critic=0.3, edit=0.5)
    parts = {n: get_reward(n)(answer, sample, CTX) for n in REWARDS}
    assert parts["format"] == 1.0 and parts["critic"] == pytest.approx(1 - 3 / 20)
    assert total_reward(answer, sample, CTX, w) == pytest.approx(0.2 * 1 + 0.3 * parts["critic"] + 0.5 * parts["edit"])


def test_trl_adapter_reads_conversational_completions_and_columns():
    func = trl_reward_func("critic", CTX)
    completions = [
        [{"role": "assistant", "content": format_thinker_answer("r", 7, 10, "a")}],
        [{"role": "assistant", "content": "garbage"}],
    ]
    out = func(prompts=[None, None], completions=completions, target_semantic=[7.0, 7.0], target_quality=[10.0, 10.0],
               trainer_state=object())  # fmt: skip
    assert func.__name__ == "critic"
    assert out == [1.0, 0.0]


def test_diagnostics_read_the_verdict_on_failed_and_good_edits_and_skip_the_rest():
    """satisfied_on_failed applies to failed previous edits only, rewrote_on_success to good ones (None
    elsewhere, so trl's mean is a rate over the samples they apply to); both carry weight 0 in the rl stage."""
    from editthinker.rewards import DIAGNOSTICS, rewrote_on_success, satisfied_on_failed

    failed = {"target_semantic": 3.0, "target_quality": 10.0}
    good = {"target_semantic": 10.0, "target_quality": 9.0}
    satisfied = format_thinker_answer("the edit matches the instruction.", 9, 9, "keep it")
    refine = format_thinker_answer("a blue circle is missing at the top.", 2, 9, "add a blue circle at the top")
    assert satisfied_on_failed(satisfied, failed, CTX) == 1.0
    assert satisfied_on_failed(refine, failed, CTX) == 0.0
    assert satisfied_on_failed("no tags", failed, CTX) == 0.0  # a malformed answer saw nothing either
    assert satisfied_on_failed(satisfied, good, CTX) is None
    assert rewrote_on_success(refine, good, CTX) == 1.0
    assert rewrote_on_success(satisfied, good, CTX) == 0.0
    assert rewrote_on_success(refine, failed, CTX) is None
    f = trl_reward_func("satisfied_on_failed", CTX)
    cols = {k: [failed[k], good[k]] for k in failed}
    assert f(["p", "p"], [satisfied, satisfied], **cols) == [1.0, None]
    assert set(DIAGNOSTICS).isdisjoint(REWARDS)


def test_learning_signal_averages_first_and_last_quarter_and_skips_empty_steps():
    from editthinker.stages.rl import learning_signal

    logs = [{"kl": float(i), "rewards/satisfied_on_failed/mean": (None if i % 2 else 1.0 - i / 10)} for i in range(8)]
    out = learning_signal(logs, ["satisfied_on_failed"])
    assert out["kl"] == {"first": 0.5, "last": 6.5}
    assert out["rewards/satisfied_on_failed/mean"] == {"first": 1.0, "last": pytest.approx(0.4)}
    assert out["entropy"] == {"first": None, "last": None}  # never logged
