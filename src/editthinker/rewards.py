"""GRPO rewards for the thinker: pure functions of (answer, step sample), registered by name.

Every reward takes the thinker's raw answer text, the step sample it answered (a row of
STEP_SAMPLE_SCHEMA: source_image (a hash: the context's image store gives its bytes), original/previous
instruction, reference, editor, seed and the judge's scores of the previous edit, target_semantic/target_quality)
and a RewardContext (the editors, the judge and the image store). The paper's reward is
alpha*R_format + beta*R_critic + gamma*R_edit; the weights come from params.rl.rewards. Scales, chosen so the
three terms are comparable:

- format: 1.0 when `parse_thinker_answer` accepts the answer, else 0.0.
- critic: 1 - (|s - E_sem| + |q - E_qual|) / 20 in [0, 1], where (s, q) is the thinker's score and
  (E_sem, E_qual) the judge's score of the previous edit: the paper's -|S_t - E| shifted by 1 and scaled
  to 0-1. 0.0 when the answer does not parse.
- edit: (E(new) - E(previous)) / 10 in [-1, 1], E = the judge's semantic score (the release's dSC; set
  params.rl.edit_metric to "overall" for sqrt(SC * PQ)). The new edit is the loop's own next step: the
  editor re-edits the SOURCE with the refined instruction and the sample's seed. An answer that stops
  the loop (satisfied, or the same instruction) keeps the previous edit: 0.0. An unparsable answer, or an
  edit that fails, gets the method's neutral value, 0.0 (the release gives 0.5 on its 0-1 scale).
- Edit calls: the re-edits of one reward batch (whole groups of completions) go to each editor as ONE call
  (editors run concurrently; an in-process or HTTP editor batches them itself), and the judge scores the new
  edits concurrently. An editor call gets `rl.edit_timeout_s` per edit in it, a judge call `rl.judge_timeout_s`;
  one over its time, or one that fails, gives its completions the neutral value and is counted
  (`EditCallStats`, in the rl metrics). A call that timed out is not waited for; the editor's lock keeps a late
  call from overlapping the next one on the same editor.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, fields
from typing import Any

from editthinker.backends.factory import build_editors, build_judge
from editthinker.config import Params, RewardWeights
from editthinker.images import ImageLookup
from editthinker.protocol import parse_thinker_answer, same_instruction
from editthinker.roles import Editor, EditRequest, Judge, JudgeScore

log = logging.getLogger(__name__)

NEUTRAL_EDIT = 0.0


@dataclass
class EditCallStats:
    """What the edit reward asked of the editors and the judge, and how much of it came back in time."""

    edits: int = 0  # re-edits sent to an editor
    edits_timed_out: int = 0
    edits_failed: int = 0
    judged: int = 0  # judge calls made
    judge_timed_out: int = 0
    judge_failed: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for k, v in counts.items():
                setattr(self, k, getattr(self, k) + v)

    def as_dict(self) -> dict[str, int]:
        return {f.name: int(getattr(self, f.name)) for f in fields(self) if not f.name.startswith("_")}

    def load(self, counts: Mapping[str, int]) -> None:
        """Continue from counts saved with a checkpoint (a resumed run)."""
        with self._lock:
            for k in self.as_dict():
                setattr(self, k, int(counts.get(k, 0)))


@dataclass(frozen=True)
class RewardContext:
    editors: Mapping[str, Editor]  # by the sample's `editor` column
    judge: Judge
    stop_semantic: float = 8.0
    stop_quality: float = 8.0
    edit_metric: str = "semantic"  # semantic | overall
    edit_timeout_s: float = 70.0  # per edit in an editor call
    judge_timeout_s: float = 70.0  # per judge call
    stats: EditCallStats = field(default_factory=EditCallStats)
    locks: Mapping[str, threading.Lock] = field(default_factory=dict)  # one per editor: its calls never overlap
    images: ImageLookup | None = None  # the store the samples' image hashes are in

    def source_png(self, sample: Mapping[str, Any]) -> bytes:
        """The bytes of the sample's source image, from the image store."""
        if self.images is None:
            raise ValueError("the edit reward needs the image store of the step samples (RewardContext.images)")
        return self.images.bytes_of(str(sample["source_image"]))

    def lock_of(self, editor: str) -> threading.Lock:
        lock = self.locks.get(editor)
        if lock is None:
            raise KeyError(f"no lock for editor {editor!r}")
        return lock


def make_context(params: Params, images: ImageLookup | None = None) -> RewardContext:
    editors = build_editors(params)
    return RewardContext(
        images=images,
        editors=editors,
        judge=build_judge(params.judge),
        stop_semantic=params.thinker.stop_semantic,
        stop_quality=params.thinker.stop_quality,
        edit_metric=params.rl.edit_metric,
        edit_timeout_s=params.rl.edit_timeout_s,
        judge_timeout_s=params.rl.judge_timeout_s,
        locks={name: threading.Lock() for name in editors},
    )


Reward = Callable[[str, Mapping[str, Any], RewardContext], float]
BatchReward = Callable[[list[str], Sequence[Mapping[str, Any]], RewardContext], list[float]]


def format_reward(answer: str, sample: Mapping[str, Any], ctx: RewardContext) -> float:
    return 1.0 if parse_thinker_answer(answer, ctx.stop_semantic, ctx.stop_quality).format_ok else 0.0


def critic_reward(answer: str, sample: Mapping[str, Any], ctx: RewardContext) -> float:
    v = parse_thinker_answer(answer, ctx.stop_semantic, ctx.stop_quality)
    if not v.format_ok:
        return 0.0
    assert v.semantic is not None and v.quality is not None
    err = abs(v.semantic - float(sample["target_semantic"])) + abs(v.quality - float(sample["target_quality"]))
    return 1.0 - err / 20.0


def _metric(semantic: float, quality: float, metric: str) -> float:
    return semantic if metric == "semantic" else (semantic * quality) ** 0.5


def _wait(future: Future, deadline: float) -> Any:
    return future.result(timeout=max(0.0, deadline - time.monotonic()))


def _edit_locked(ctx: RewardContext, name: str, requests: list[EditRequest]) -> list[bytes]:
    with ctx.lock_of(name):
        images = ctx.editors[name].edit(requests)
    if len(images) != len(requests):
        raise ValueError(f"editor {name} returned {len(images)} images for {len(requests)} requests")
    return images


def edit_rewards(answers: list[str], samples: Sequence[Mapping[str, Any]], ctx: RewardContext) -> list[float]:
    """R_edit for a batch of answers: the re-edits go to each editor as one call, the new edits to the judge
    concurrently; a call over its time or one that fails gives the neutral value (counted in ctx.stats)."""
    out = [NEUTRAL_EDIT] * len(answers)
    wanted: dict[str, list[tuple[int, EditRequest]]] = {}
    for i, (answer, sample) in enumerate(zip(answers, samples, strict=True)):
        v = parse_thinker_answer(answer, ctx.stop_semantic, ctx.stop_quality)
        if not v.format_ok:
            continue  # neutral
        if v.satisfied or same_instruction(v.answer, sample["previous_instruction"]):
            out[i] = 0.0  # the loop stops here and keeps the previous edit
            continue
        if sample["editor"] not in ctx.editors:
            raise KeyError(
                f"step sample names editor {sample['editor']!r}, not in params.editors {sorted(ctx.editors)}"
            )
        wanted.setdefault(sample["editor"], []).append(
            (i, EditRequest(ctx.source_png(sample), v.answer, int(sample["seed"])))
        )
    edited = _reedit(wanted, ctx)
    for i, new in _judge(edited, samples, ctx).items():
        s = samples[i]
        before = _metric(float(s["target_semantic"]), float(s["target_quality"]), ctx.edit_metric)
        out[i] = (_metric(new.semantic, new.quality, ctx.edit_metric) - before) / 10.0
    return out


def _reedit(wanted: dict[str, list[tuple[int, EditRequest]]], ctx: RewardContext) -> dict[int, bytes]:
    """One call per editor, the editors concurrently; the new edits by index (none for a late or failed call)."""
    edited: dict[int, bytes] = {}
    if not wanted:
        return edited
    pool = ThreadPoolExecutor(max_workers=len(wanted), thread_name_prefix="edit-reward-editor")
    try:
        start = time.monotonic()
        calls = {name: pool.submit(_edit_locked, ctx, name, [r for _, r in items]) for name, items in wanted.items()}
        for name, call in calls.items():
            items = wanted[name]
            ctx.stats.add(edits=len(items))
            try:
                images = _wait(call, start + ctx.edit_timeout_s * len(items))
            except FutureTimeout:
                ctx.stats.add(edits_timed_out=len(items))
                log.warning("editor %s: %d re-edits over %.0f s each: neutral reward", name, len(items),
                            ctx.edit_timeout_s)  # fmt: skip
                continue
            except Exception as exc:  # a failed edit is neutral, as the release does
                ctx.stats.add(edits_failed=len(items))
                log.warning("editor %s failed on %d re-edits (%s): neutral reward", name, len(items), exc)
                continue
            edited.update({i: png for (i, _), png in zip(items, images, strict=True)})
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # a call past its time is left to finish on its own
    return edited


def _judge(edited: dict[int, bytes], samples: Sequence[Mapping[str, Any]], ctx: RewardContext) -> dict[int, JudgeScore]:
    """The judge's scores of the new edits, all calls at once; none for a late or failed call."""
    scores: dict[int, JudgeScore] = {}
    if not edited:
        return scores
    pool = ThreadPoolExecutor(max_workers=len(edited), thread_name_prefix="edit-reward-judge")
    try:
        start = time.monotonic()
        calls: dict[int, Future[JudgeScore]] = {}
        for i, png in edited.items():
            s = samples[i]
            calls[i] = pool.submit(ctx.judge.score, ctx.source_png(s), png, s["original_instruction"], s["reference"])
        ctx.stats.add(judged=len(calls))
        for i, call in calls.items():
            try:
                scores[i] = _wait(call, start + ctx.judge_timeout_s)
            except FutureTimeout:
                ctx.stats.add(judge_timed_out=1)
            except Exception as exc:
                ctx.stats.add(judge_failed=1)
                log.warning("judge failed on a re-edit (%s): neutral reward", exc)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return scores


def edit_reward(answer: str, sample: Mapping[str, Any], ctx: RewardContext) -> float:
    return edit_rewards([answer], [sample], ctx)[0]


REWARDS: dict[str, Reward] = {"format": format_reward, "critic": critic_reward, "edit": edit_reward}
# rewards that score a whole batch at once (their calls batched and concurrent); trl calls these
BATCH_REWARDS: dict[str, BatchReward] = {"edit": edit_rewards}


def get_reward(name: str) -> Reward:
    try:
        return REWARDS[name]
    except KeyError:
        raise KeyError(f"unknown reward {name!r}; known: {sorted(REWARDS)}") from None


def weights_of(w: RewardWeights) -> dict[str, float]:
    return {name: float(getattr(w, name)) for name in REWARDS}


def total_reward(answer: str, sample: Mapping[str, Any], ctx: RewardContext, weights: RewardWeights) -> float:
    """The weighted sum alpha*format + beta*critic + gamma*edit (what GRPO maximises)."""
    return sum(w * get_reward(name)(answer, sample, ctx) for name, w in weights_of(weights).items() if w)


def completion_text(completion: Any) -> str:
    """trl hands a conversational completion as [{"role": "assistant", "content": ...}]; a plain one as str."""
    if isinstance(completion, str):
        return completion
    content = completion[-1]["content"]
    if isinstance(content, list):
        return "".join(p.get("text") or "" for p in content if p.get("type") == "text")
    return str(content)


# -- diagnostics: how the thinker reads the previous edit, logged by GRPO beside the rewards (weight 0) -------
# A diagnostic is a pure function like a reward, 1.0 / 0.0 where it applies and None where it does not (trl
# averages what applies), so `rewards/<name>/mean` is a rate over the samples it applies to.
Diagnostic = Callable[[str, Mapping[str, Any], RewardContext], float | None]


def _previous_ok(sample: Mapping[str, Any], ctx: RewardContext) -> bool:
    return float(sample["target_semantic"]) >= ctx.stop_semantic and float(sample["target_quality"]) >= ctx.stop_quality


def satisfied_on_failed(answer: str, sample: Mapping[str, Any], ctx: RewardContext) -> float | None:
    """On a failed previous edit (the judge's scores below the stop thresholds): 1.0 when the answer says
    satisfied (the thinker did not see the failure), 0.0 when it refines; None on a good edit."""
    if _previous_ok(sample, ctx):
        return None
    v = parse_thinker_answer(answer, ctx.stop_semantic, ctx.stop_quality)
    return 1.0 if v.format_ok and v.satisfied else 0.0


def rewrote_on_success(answer: str, sample: Mapping[str, Any], ctx: RewardContext) -> float | None:
    """On a good previous edit: 1.0 when the answer refines it anyway (or does not parse), 0.0 when it says
    satisfied; None on a failed edit."""
    if not _previous_ok(sample, ctx):
        return None
    v = parse_thinker_answer(answer, ctx.stop_semantic, ctx.stop_quality)
    return 0.0 if v.format_ok and v.satisfied else 1.0


DIAGNOSTICS: dict[str, Diagnostic] = {"satisfied_on_failed": satisfied_on_failed,
                                      "rewrote_on_success": rewrote_on_success}  # fmt: skip


def trl_reward_func(name: str, ctx: RewardContext) -> Callable[..., list[float | None]]:
    """A reward (or a diagnostic) in trl's calling convention: f(prompts, completions, **dataset columns) ->
    list[float | None]."""
    reward: Reward | Diagnostic = DIAGNOSTICS[name] if name in DIAGNOSTICS else get_reward(name)
    batch = BATCH_REWARDS.get(name)

    def func(prompts: list[Any], completions: list[Any], **columns: Any) -> list[float | None]:
        n = len(completions)
        samples = [{k: v[i] for k, v in columns.items() if isinstance(v, list) and len(v) == n} for i in range(n)]
        answers = [completion_text(c) for c in completions]
        if batch is not None:
            return list(batch(answers, samples, ctx))
        return [reward(a, s, ctx) for a, s in zip(answers, samples, strict=True)]

    func.__name__ = name  # trl logs rewards/<name>
    return func
