"""GRPO rewards for the thinker: pure functions of (answer, step sample), registered by name.

Every reward takes the thinker's raw answer text, the step sample it answered (a row of
STEP_SAMPLE_SCHEMA: source_png, original/previous instruction, target_scene, editor, seed and the judge's
scores of the previous edit, target_semantic/target_quality) and a RewardContext (the editors and the
judge). The paper's reward is alpha*R_format + beta*R_critic + gamma*R_edit; the weights come from
params.rl.rewards. Scales, chosen so the three terms are comparable:

- format: 1.0 when `parse_thinker_answer` accepts the answer, else 0.0.
- critic: 1 - (|s - E_sem| + |q - E_qual|) / 20 in [0, 1], where (s, q) is the thinker's score and
  (E_sem, E_qual) the judge's score of the previous edit: the paper's -|S_t - E| shifted by 1 and scaled
  to 0-1. 0.0 when the answer does not parse.
- edit: (E(new) - E(previous)) / 10 in [-1, 1], E = the judge's semantic score (the release's dSC; set
  params.rl.edit_metric to "overall" for sqrt(SC * PQ)). The new edit is the loop's own next step: the
  editor re-edits the SOURCE with the refined instruction and the sample's seed. An answer that stops
  the loop (satisfied, or the same instruction) keeps the previous edit: 0.0. An unparsable answer, or an
  edit that fails, gets the method's neutral value, 0.0 (the release gives 0.5 on its 0-1 scale).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from editthinker.backends.factory import build_editors, build_judge
from editthinker.config import Params, RewardWeights
from editthinker.protocol import parse_thinker_answer, same_instruction
from editthinker.roles import Editor, EditRequest, Judge

NEUTRAL_EDIT = 0.0


@dataclass(frozen=True)
class RewardContext:
    editors: Mapping[str, Editor]  # by the sample's `editor` column
    judge: Judge
    stop_semantic: float = 8.0
    stop_quality: float = 8.0
    edit_metric: str = "semantic"  # semantic | overall


def make_context(params: Params) -> RewardContext:
    return RewardContext(
        editors=build_editors(params),
        judge=build_judge(params.judge),
        stop_semantic=params.thinker.stop_semantic,
        stop_quality=params.thinker.stop_quality,
        edit_metric=params.rl.edit_metric,
    )


Reward = Callable[[str, Mapping[str, Any], RewardContext], float]


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


def edit_reward(answer: str, sample: Mapping[str, Any], ctx: RewardContext) -> float:
    v = parse_thinker_answer(answer, ctx.stop_semantic, ctx.stop_quality)
    if not v.format_ok:
        return NEUTRAL_EDIT
    if v.satisfied or same_instruction(v.answer, sample["previous_instruction"]):
        return 0.0  # the loop stops here and keeps the previous edit
    editor = ctx.editors.get(sample["editor"])
    if editor is None:
        raise KeyError(f"step sample names editor {sample['editor']!r}, not in params.editors {sorted(ctx.editors)}")
    try:
        (png,) = editor.edit([EditRequest(sample["source_png"], v.answer, int(sample["seed"]))])
        new = ctx.judge.score(sample["source_png"], png, sample["original_instruction"], sample["target_scene"])
    except ValueError:
        return NEUTRAL_EDIT  # the edit failed: neutral, as the release does
    before = _metric(float(sample["target_semantic"]), float(sample["target_quality"]), ctx.edit_metric)
    return (_metric(new.semantic, new.quality, ctx.edit_metric) - before) / 10.0


REWARDS: dict[str, Reward] = {"format": format_reward, "critic": critic_reward, "edit": edit_reward}


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


def trl_reward_func(name: str, ctx: RewardContext) -> Callable[..., list[float | None]]:
    """A reward in trl's calling convention: f(prompts, completions, **dataset columns) -> list[float]."""
    reward = get_reward(name)

    def func(prompts: list[Any], completions: list[Any], **columns: list[Any]) -> list[float | None]:
        out: list[float | None] = []
        for i, completion in enumerate(completions):
            sample = {k: v[i] for k, v in columns.items() if isinstance(v, list) and len(v) == len(completions)}
            out.append(reward(completion_text(completion), sample, ctx))
        return out

    func.__name__ = name  # trl logs rewards/<name>
    return func
