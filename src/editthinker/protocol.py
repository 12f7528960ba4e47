"""The answer formats of the method, written and parsed in one place.

Thinker: `<think>reasoning</think><score>{"semantic": s, "quality": q}</score><answer>instruction</answer>`
Expert:  JSON `{"is_satisfied": bool, "reason": str, "new_rewritten_prompt": str}` (it gives no score)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

_THINKER_RE = re.compile(
    r"^\s*<think>(?P<think>.*?)</think>\s*<score>(?P<score>.*?)</score>\s*<answer>(?P<answer>.*?)</answer>\s*$",
    re.DOTALL,
)


@dataclass(frozen=True)
class Verdict:
    """One critique: parsed from a thinker's or expert's raw answer.

    `format_ok` is False when the raw answer could not be parsed; then `error` says why and the other
    fields are empty. `satisfied` is the stop flag: the expert's is_satisfied, or for a thinker a score
    at or above the stop threshold.
    """

    raw: str
    format_ok: bool
    reason: str = ""
    answer: str = ""
    semantic: float | None = None
    quality: float | None = None
    satisfied: bool = False
    error: str = ""


class FormatError(ValueError):
    pass


def format_thinker_answer(reason: str, semantic: float, quality: float, answer: str) -> str:
    score = json.dumps({"semantic": _num(semantic), "quality": _num(quality)})
    return f"<think>{reason}</think><score>{score}</score><answer>{answer}</answer>"


def _num(x: float) -> int | float:
    return int(x) if float(x).is_integer() else round(float(x), 2)


def _score_value(d: dict, key: str) -> float:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise FormatError(f"score field {key!r} is missing or not a number")
    if not 0 <= v <= 10:
        raise FormatError(f"score field {key!r}={v} is outside 0-10")
    return float(v)


def parse_thinker_answer(raw: str, stop_semantic: float = 8.0, stop_quality: float = 8.0) -> Verdict:
    """Strict parse: the three tags in order, nothing outside them, a JSON score with both numbers.

    Never raises: a bad answer gives `format_ok=False` with the reason in `error`.
    """
    m = _THINKER_RE.match(raw)
    try:
        if not m:
            missing = [t for t in ("think", "score", "answer") if f"<{t}>" not in raw or f"</{t}>" not in raw]
            raise FormatError(f"missing tags: {missing}" if missing else "tags out of order or text outside them")
        try:
            score = json.loads(m["score"])
        except json.JSONDecodeError as exc:
            raise FormatError(f"score is not JSON: {exc.msg}") from exc
        if not isinstance(score, dict):
            raise FormatError("score is not a JSON object")
        sem, qual = _score_value(score, "semantic"), _score_value(score, "quality")
        answer = " ".join(m["answer"].split())
        if not answer:
            raise FormatError("empty answer")
    except FormatError as exc:
        return Verdict(raw=raw, format_ok=False, error=str(exc))
    return Verdict(
        raw=raw,
        format_ok=True,
        reason=m["think"].strip(),
        answer=answer,
        semantic=sem,
        quality=qual,
        satisfied=sem >= stop_semantic and qual >= stop_quality,
    )


def format_expert_answer(is_satisfied: bool, reason: str, new_rewritten_prompt: str) -> str:
    return json.dumps(
        {"is_satisfied": is_satisfied, "reason": reason, "new_rewritten_prompt": new_rewritten_prompt}, sort_keys=True
    )


def load_json_object(raw: str, what: str) -> dict[str, Any]:
    """The JSON object in a model's answer (a ```json fence around it is tolerated); FormatError otherwise."""
    text = raw.strip()
    fence = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, re.DOTALL)
    if fence:
        text = fence.group(1)
    try:
        d = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FormatError(f"{what} is not JSON: {exc.msg}") from exc
    if not isinstance(d, dict):
        raise FormatError(f"{what} is not a JSON object")
    return d


def parse_expert_answer(raw: str) -> Verdict:
    """Strict parse of the expert's JSON (a ```json fence around it is tolerated)."""
    try:
        d = load_json_object(raw, "expert answer")
        sat = d.get("is_satisfied")
        if not isinstance(sat, bool):
            raise FormatError("is_satisfied is missing or not a boolean")
        reason, prompt = d.get("reason"), d.get("new_rewritten_prompt")
        if not isinstance(reason, str) or not isinstance(prompt, str):
            raise FormatError("reason and new_rewritten_prompt must be strings")
        prompt = " ".join(prompt.split())
        if not sat and not prompt:
            raise FormatError("not satisfied but no new_rewritten_prompt")
    except FormatError as exc:
        return Verdict(raw=raw, format_ok=False, error=str(exc))
    return Verdict(raw=raw, format_ok=True, reason=reason.strip(), answer=prompt, satisfied=sat)


def same_instruction(a: str, b: str) -> bool:
    return " ".join(a.lower().split()).rstrip(".") == " ".join(b.lower().split()).rstrip(".")
