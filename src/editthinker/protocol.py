"""The answer formats of the method, written and parsed in one place.

Thinker: `<think>reasoning</think><score>{"semantic": s, "quality": q}</score><answer>instruction</answer>`
Expert:  JSON `{"is_satisfied": bool, "reason": str, "new_rewritten_prompt": str}` (it gives no score)

Two thinker parsers: the strict one (training rewards, validation; the default everywhere) and a lenient one
that accepts what the EditThinker release's reward parser accepts (for evaluating a released thinker).
The release's user prompt is a template file with two placeholders filled by plain string replacement.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
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
    return f"<think>{reason}</think>{format_thinker_score(semantic, quality)}<answer>{answer}</answer>"


@lru_cache(maxsize=4096)
def format_thinker_score(semantic: float, quality: float) -> str:
    """The `<score>` block of a thinker answer (cached: scores repeat)."""
    score = json.dumps({"semantic": _num(semantic), "quality": _num(quality)})
    return f"<score>{score}</score>"


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


# -- the release's conventions: lenient parsing, its answer layout, its prompt template --------------------
# The release deletes every whitespace run next to "<", ">" or "/" before it looks for tags (so "< think >"
# is "<think>", and "a / b" in the text becomes "a/b"), then needs the three blocks (tag names in any case),
# their first opening tags in order, and the first case-sensitive <score> block a JSON object whose
# "semantic" and "quality" are JSON numbers (a bool passes, as in Python; no range check). Other text, before,
# between or after, and repeated blocks are tolerated: the first block of each tag counts.
_RELEASE_SPACE_RE = re.compile(r"\s*([<>/])\s*")
_BLOCK_RE = {t: re.compile(rf"<{t}>(.*?)</{t}>", re.DOTALL | re.IGNORECASE) for t in ("think", "score", "answer")}
_OPEN_RE = {t: re.compile(rf"<{t}>", re.IGNORECASE) for t in ("think", "score", "answer")}
_RELEASE_SCORE_RE = re.compile(r"<score>\s*(.*?)\s*</score>", re.DOTALL)  # case-sensitive, as the release's
_RELEASE_ANSWER_RE = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.DOTALL)


def normalise_release_answer(raw: str) -> str:
    """The release's first step: whitespace directly before or after "<", ">" and "/" deleted."""
    return _RELEASE_SPACE_RE.sub(r"\1", raw)


def parse_thinker_answer_lenient(raw: str, stop_semantic: float = 8.0, stop_quality: float = 8.0) -> Verdict:
    """What the release's reward parser accepts (its format reward is 1 exactly when `format_ok`).

    Read from the normalised text (see `normalise_release_answer`): the reason is the first think block,
    stripped; the answer the first case-sensitive answer block, stripped ("" when there is none, as the
    release's); scores are the first case-sensitive score block's numbers, unchecked for range. As the
    release's inference loop does, an empty answer counts as satisfied. Never raises.
    """
    text = normalise_release_answer(raw)
    try:
        blocks = {t: r.search(text) for t, r in _BLOCK_RE.items()}
        missing = [t for t, m in blocks.items() if m is None]
        if missing:
            raise FormatError(f"missing tags: {missing}")
        opens = [m.start() for t in ("think", "score", "answer") if (m := _OPEN_RE[t].search(text))]
        if not opens[0] < opens[1] < opens[2]:
            raise FormatError("tags out of order")
        score_m = _RELEASE_SCORE_RE.search(text)
        if score_m is None:
            raise FormatError("no case-sensitive <score> block")
        try:
            score = json.loads(score_m.group(1).strip())
        except json.JSONDecodeError as exc:
            raise FormatError(f"score is not JSON: {exc.msg}") from exc
        if not isinstance(score, dict):
            raise FormatError("score is not a JSON object")
        values = [score.get(k) for k in ("semantic", "quality")]
        if not all(isinstance(v, int | float) for v in values):
            raise FormatError("score fields 'semantic' and 'quality' must both be numbers")
    except FormatError as exc:
        return Verdict(raw=raw, format_ok=False, error=str(exc))
    sem, qual = float(values[0]), float(values[1])  # type: ignore[arg-type]
    answer_m = _RELEASE_ANSWER_RE.search(text)
    answer = answer_m.group(1).strip() if answer_m else ""
    think = blocks["think"]
    return Verdict(
        raw=raw,
        format_ok=True,
        reason=think.group(1).strip() if think else "",
        answer=answer,
        semantic=sem,
        quality=qual,
        satisfied=not answer or (sem >= stop_semantic and qual >= stop_quality),
    )


PARSERS = {"strict": parse_thinker_answer, "lenient": parse_thinker_answer_lenient}


def format_release_answer(reason: str, semantic: float, quality: float, answer: str) -> str:
    """A thinker answer in the release's layout: each block on its own lines, blank lines between blocks.
    Both parsers read it; the numbers are written as `format_thinker_answer` writes them."""
    score = json.dumps({"semantic": _num(semantic), "quality": _num(quality)})
    return f"<think>\n{reason}\n</think>\n\n<score>\n{score}\n</score>\n\n<answer>\n{answer}\n</answer>"


IMAGE_TOKEN = "<image>"
ORIGINAL_SLOT = "{original_instruction}"  # the release's placeholder names, so its template file works as is
PREVIOUS_SLOT = "{rewritten_prompt}"
_SLOTS_RE = re.compile(re.escape(ORIGINAL_SLOT) + "|" + re.escape(PREVIOUS_SLOT))

# A prompt in the release's layout (our wording): two image tokens, the task, the two quoted slots, the score
# criteria, the required output. For a released thinker, use the release's own template file instead.
RELEASE_PROMPT_TEMPLATE = """<image><image>
# Task
You review one step of an image edit and write the instruction for the next step. Image 1 is the original
image. Image 2 is the result of editing image 1 with the rewritten prompt below.

Original User Instruction (what the user asked for): "{original_instruction}"
Rewritten Prompt (the instruction that produced image 2): "{rewritten_prompt}"

# Scores of image 2, each 0-10
- semantic: how completely the original instruction is carried out, with nothing else changed.
- quality: how natural the image looks, free of artifacts and distortions.

# The next instruction
If image 2 falls short, write a better prompt: name the object exactly, say what to change and what to keep.
If image 2 is good enough, repeat the rewritten prompt unchanged.

# Output
<think>
your review of image 2
</think>

<score>
{"semantic": 0-10, "quality": 0-10}
</score>

<answer>
the prompt for the next edit
</answer>"""


def check_release_template(template: str) -> None:
    """A usable release prompt template: exactly two image tokens and both placeholders; ValueError otherwise."""
    problems = []
    if template.count(IMAGE_TOKEN) != 2:
        problems.append(f"it must hold exactly two {IMAGE_TOKEN} tokens, not {template.count(IMAGE_TOKEN)}")
    problems += [f"it lacks the placeholder {slot}" for slot in (ORIGINAL_SLOT, PREVIOUS_SLOT) if slot not in template]
    if problems:
        raise ValueError("prompt template: " + "; ".join(problems))


def fill_release_prompt(template: str, original_instruction: str, previous_instruction: str) -> str:
    """The template stripped, its placeholders replaced by plain text (no format(), no Jinja: literal braces
    elsewhere stay), in one pass so an instruction that contains a placeholder name is left as it is."""
    values = {ORIGINAL_SLOT: original_instruction, PREVIOUS_SLOT: previous_instruction}
    return _SLOTS_RE.sub(lambda m: values[m.group(0)], template.strip())


def read_release_prompt(template: str, text: str) -> tuple[str, str] | None:
    """The inverse of `fill_release_prompt`: (original, previous instruction) from a filled prompt, or None when
    `text` is not this template filled in."""
    parts = _SLOTS_RE.split(template.strip())
    slots = _SLOTS_RE.findall(template.strip())
    names = {ORIGINAL_SLOT: "original", PREVIOUS_SLOT: "previous"}
    pattern, seen = re.escape(parts[0]), set()
    for slot, tail in zip(slots, parts[1:], strict=True):
        name = names[slot]
        pattern += f"(?P={name})" if name in seen else f"(?P<{name}>.*?)"
        seen.add(name)
        pattern += re.escape(tail)
    m = re.fullmatch(pattern, text, re.DOTALL)
    if m is None or seen != {"original", "previous"}:
        return None
    return m["original"], m["previous"]


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
