"""The RL edit reward with real roles: a batch's re-edits go to each editor as one call (in-process or over the
HTTP editor service), the judge scores them concurrently, and a call over its time or one that fails gives the
neutral reward and is counted. No model involved; the slow editors and judges block on events, not on sleeps."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest

from editthinker.backends.http_editor import EditorServer, make_app
from editthinker.backends.synthetic import SyntheticJudge
from editthinker.config import Params
from editthinker.images import ImageBytes
from editthinker.protocol import format_thinker_answer
from editthinker.rewards import NEUTRAL_EDIT, EditCallStats, edit_reward, edit_rewards, make_context, trl_reward_func
from editthinker.roles import EditRequest, JudgeScore
from editthinker.world.scene import render_png
from editthinker.world.tasks import canonical_instruction, make_task

PARAMS = Params()
IMAGES = ImageBytes()  # the images the samples refer to, by hash


def _batch(n: int, editors: tuple[str, ...] = ("painter", "mover")) -> tuple[list[str], list[dict]]:
    """n step samples whose previous edit did nothing, each answered by a canonical rewrite (a re-edit)."""
    judge = SyntheticJudge()
    answers, samples = [], []
    for i in range(n):
        t = make_task(55, i, 2, 4, {"paraphrase": 1.0})
        src = render_png(t.source, 64)
        s = judge.score(src, src, t.instruction, t.target.to_json())
        samples.append({"editor": editors[i % len(editors)], "seed": i, "source_image": IMAGES.add(src),
                        "original_instruction": t.instruction, "previous_instruction": t.instruction,
                        "reference": t.target.to_json(), "target_semantic": s.semantic,
                        "target_quality": s.quality})  # fmt: skip
        answers.append(format_thinker_answer("nothing changed.", s.semantic, s.quality, canonical_instruction(t.op)))
    return answers, samples


class CountingEditor:
    """Wraps an editor; records the size of every call."""

    def __init__(self, inner):
        self.inner, self.name, self.model_id, self.calls = inner, inner.name, inner.model_id, []

    def edit(self, requests: list[EditRequest]) -> list[bytes]:
        self.calls.append(len(requests))
        return self.inner.edit(requests)


class BlockedEditor:
    """Never answers until released: every call to it runs past any timeout."""

    name, model_id = "painter", "blocked"

    def __init__(self):
        self.release = threading.Event()

    def edit(self, requests):
        self.release.wait(30)
        return [r.source_png for r in requests]


class FailingEditor:
    name, model_id = "mover", "failing"

    def edit(self, requests):
        raise RuntimeError("out of memory (pretend)")


class GatheringJudge:
    """Answers only once `n` calls are in flight at the same time (a barrier): proves the calls are concurrent."""

    name, model_id = "gathering", "gathering"

    def __init__(self, n: int):
        self.barrier = threading.Barrier(n, timeout=20)
        self.inner = SyntheticJudge()

    def score(self, source_png, edited_png, instruction, reference) -> JudgeScore:
        self.barrier.wait()
        return self.inner.score(source_png, edited_png, instruction, reference)


def test_batch_rewards_equal_the_one_by_one_rewards_and_each_editor_gets_one_call():
    base = make_context(PARAMS, IMAGES)
    answers, samples = _batch(8)
    one_by_one = [edit_reward(a, s, base) for a, s in zip(answers, samples, strict=True)]
    counting = {name: CountingEditor(e) for name, e in base.editors.items()}
    ctx = replace(base, editors=counting, stats=EditCallStats())
    assert edit_rewards(answers, samples, ctx) == one_by_one
    assert any(r > 0 for r in one_by_one)  # the canonical rewrites do help some edits
    assert {n: e.calls for n, e in counting.items()} == {"painter": [4], "mover": [4]}
    assert ctx.stats.as_dict() == {"edits": 8, "edits_timed_out": 0, "edits_failed": 0, "judged": 8,
                                   "judge_timed_out": 0, "judge_failed": 0}  # fmt: skip


def test_the_judge_scores_a_batch_concurrently():
    base = make_context(PARAMS, IMAGES)
    answers, samples = _batch(6)
    ctx = replace(base, judge=GatheringJudge(6), stats=EditCallStats())
    rewards = edit_rewards(answers, samples, ctx)  # a judge called one at a time would break its barrier
    assert rewards == edit_rewards(answers, samples, replace(base, stats=EditCallStats()))
    assert ctx.stats.judged == 6 and ctx.stats.judge_failed == 0


def test_an_editor_over_its_time_gives_the_neutral_reward_and_is_counted():
    base = make_context(PARAMS, IMAGES)
    blocked, failing = BlockedEditor(), FailingEditor()
    ctx = replace(base, editors={"painter": blocked, "mover": failing}, edit_timeout_s=0.05, stats=EditCallStats())
    answers, samples = _batch(6)
    try:
        rewards = edit_rewards(answers, samples, ctx)
    finally:
        blocked.release.set()
    assert rewards == [NEUTRAL_EDIT] * 6
    assert ctx.stats.as_dict() == {"edits": 6, "edits_timed_out": 3, "edits_failed": 3, "judged": 0,
                                   "judge_timed_out": 0, "judge_failed": 0}  # fmt: skip


def test_a_judge_over_its_time_gives_the_neutral_reward_and_is_counted():
    base = make_context(PARAMS, IMAGES)
    judge = GatheringJudge(99)  # never gathers 99 calls: every call blocks until its barrier breaks
    ctx = replace(base, judge=judge, judge_timeout_s=0.05, stats=EditCallStats())
    answers, samples = _batch(4)
    try:
        rewards = edit_rewards(answers, samples, ctx)
    finally:
        judge.barrier.abort()
    assert rewards == [NEUTRAL_EDIT] * 4
    assert ctx.stats.judge_timed_out == 4 and ctx.stats.edits == 4


def test_a_late_call_never_overlaps_the_next_call_on_the_same_editor():
    base = make_context(PARAMS, IMAGES)
    blocked = BlockedEditor()
    ctx = replace(base, editors={"painter": blocked, "mover": base.editors["mover"]}, edit_timeout_s=0.05,
                  stats=EditCallStats())  # fmt: skip
    answers, samples = _batch(2, editors=("painter",))
    try:
        edit_rewards(answers, samples, ctx)  # times out; the call still holds the editor
        assert ctx.lock_of("painter").locked()
        edit_rewards(answers, samples, ctx)  # waits for the editor, and runs out of time too
    finally:
        blocked.release.set()
    assert ctx.stats.edits_timed_out == 4


def test_the_http_editor_service_gives_the_same_rewards_as_the_in_process_editors():
    answers, samples = _batch(6)
    local = make_context(PARAMS, IMAGES)
    expected = edit_rewards(answers, samples, local)
    editors = {n: CountingEditor(e) for n, e in local.editors.items()}
    with EditorServer(make_app(editors["painter"])) as painter, EditorServer(make_app(editors["mover"])) as mover:
        params = Params.model_validate(
            {
                "editors": [
                    {"name": "painter", "kind": "http", "url": painter.url, "retries": 0},
                    {"name": "mover", "kind": "http", "url": mover.url, "retries": 0},
                ]
            }  # fmt: skip
        )
        remote = make_context(params, IMAGES)
        assert edit_rewards(answers, samples, remote) == expected
    assert {n: e.calls for n, e in editors.items()} == {"painter": [3], "mover": [3]}  # one POST each
    assert remote.stats.edits == 6 and remote.stats.edits_failed == 0


def test_trl_calls_the_edit_reward_once_per_batch():
    base = make_context(PARAMS, IMAGES)
    counting = {name: CountingEditor(e) for name, e in base.editors.items()}
    ctx = replace(base, editors=counting, stats=EditCallStats())
    answers, samples = _batch(4)
    func = trl_reward_func("edit", ctx)
    columns = {k: [s[k] for s in samples] for k in samples[0]}
    completions = [[{"role": "assistant", "content": a}] for a in answers]
    out = func(prompts=[None] * 4, completions=completions, trainer_state=object(), **columns)
    assert out == edit_rewards(answers, samples, make_context(PARAMS, IMAGES))
    assert {n: e.calls for n, e in counting.items()} == {"painter": [2], "mover": [2]}


def test_rl_params_name_the_timeouts_and_reject_groups_that_do_not_divide():
    assert PARAMS.rl.edit_timeout_s == 70.0  # the release: an edit over 70 s counts as failed
    with pytest.raises(ValueError, match="multiple of num_generations"):
        Params.model_validate({"rl": {"batch_size": 6, "num_generations": 4}})
