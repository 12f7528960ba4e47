"""RISEBench: reasoning-informed editing; accuracy % = share of items with full marks on every judged dimension.

Data: RISEBench-64 (`data/data_total.json` from GitHub, images under `data/<category>_images/`) or
RISEBench-360 (`datav2_total_w_subtask.json` with `data.zip` unpacked beside it). `--data` is the JSON file
or a folder holding one of them; image paths are relative to the JSON's folder or its `data/`.
Output: `<run>/images/<category>/<index>.png` (the official `gpt_eval.py --output outputs/<MODEL>`).
Scoring, as `gpt_eval.py`: up to three calls per item, each answer ending `Final Score: X`:
- Appearance Consistency (input or reference image vs output), 1-5; not asked for consistency-free rows;
- Instruction Reasoning (output against the text reference; with the input when `reasoning_img` is set;
  against the reference image when the row has `reference_img`), 1-5;
- Visual Plausibility (output only), 1-5; not for logical rows.
Logical rows answer consistency and reasoning 0/1, mapped to 1/5. Item score: 0.3C + 0.5R + 0.2VP
(consistency-free: 0.2VP + 0.8R; logical: 0.3C + 0.7R), halved (floor 1) when R = 1; percent 25(s - 1).
Accuracy: an item counts when every dimension judged for it is 5; mean over items, overall and per category.
Fixed here: a missing flag (the 64-item file has none) is false, not NaN-true; a consistency-free row is
judged on the dimensions it has (the official completion test needs a consistency score it never asks for,
so such rows could never count); an unparsable answer is a missing score, not a crash.
"""

from __future__ import annotations

import json
import math
import re
from functools import partial
from pathlib import Path
from typing import Any

from editthinker.benchmarks.base import (
    BenchItem,
    JudgeCall,
    Loaded,
    ScoredItem,
    by,
    image_part,
    jpeg_of,
    mean,
    png_of,
    text_part,
    write_png,
)
from editthinker.config import BenchmarksConfig
from editthinker.protocol import FormatError

CATEGORIES = ("temporal_reasoning", "causal_reasoning", "spatial_reasoning", "logical_reasoning")
JSON_NAMES = ("data_total.json", "datav2_total_w_subtask.json", "data/data_total.json")
DIMENSIONS = ("consistency", "reasoning", "plausibility")
MAX_SIDE = 768  # images are sent as JPEG, shrunk to at most this side

_END = "End your answer with a last line of the form: Final Score: X"
CONSISTENCY = (
    """You compare two images: the first is the {first}, the second is an image an editing model
produced for the instruction: "{instruction}".
Judge APPEARANCE CONSISTENCY only: are the parts of the scene that the instruction should not change kept
the same (identity, layout, background, colours, textures)? Ignore whether the instruction was carried out.
Score from 1 to 5: 5 all unrelated content is unchanged; 4 minor differences; 3 noticeable differences;
2 large parts changed; 1 the scene is a different one.
Explain briefly. """
    + _END
)

REASONING = (
    """An image editing model was asked: "{instruction}".
This task needs reasoning: the correct result is described by this reference: "{reference}".
{shown}
Judge INSTRUCTION REASONING only: does the output show the correct outcome described by the reference?
Score from 1 to 5: 5 fully correct; 4 correct with small flaws; 3 partly correct; 2 mostly wrong; 1 wrong
or the instruction ignored. Explain briefly. """
    + _END
)

REASONING_REF_IMG = (
    """An image editing model was asked: "{instruction}".
The first image is the REFERENCE showing the correct result; the second is the model's output.
Judge INSTRUCTION REASONING only: does the output reach the same result as the reference (content and
arrangement; style and exact pixels do not matter)? Score from 1 to 5: 5 the same result; 4 the same with
small flaws; 3 partly the same; 2 mostly different; 1 wrong. Explain briefly. """
    + _END
)

PLAUSIBILITY = (
    """You see one image produced by an image editing model.
Judge VISUAL PLAUSIBILITY only: is it realistic and coherent, free of distortions, artifacts and physically
impossible details? Score from 1 to 5: 5 fully plausible; 4 minor flaws; 3 noticeable flaws; 2 major flaws;
1 implausible or broken. Explain briefly. """
    + _END
)

LOGICAL_CONSISTENCY = (
    """You compare two images: the first is the {first}, the second is a model's answer to
the puzzle: "{instruction}".{answer}
Judge only whether the output keeps the puzzle itself intact (same grid, board, figures and givens; only
the solution may be added). Answer 1 if it is kept, 0 if it is not. Explain briefly. """
    + _END
)

LOGICAL_REASONING = (
    """A model was asked to solve this visual puzzle by editing the image: "{instruction}".
{shown}
Judge only whether the solution shown in the output is exactly correct. Answer 1 if it is, 0 if it is not.
Explain briefly. """
    + _END
)

_FINAL = re.compile(r"final\s*score\W{0,4}?\s*[:：]?\s*\**\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE)


def parse_final(raw: str, lo: int = 1, hi: int = 5) -> dict[str, float]:
    """The last `Final Score: X` of the answer, X an integer in [lo, hi]; FormatError otherwise."""
    found = _FINAL.findall(raw)
    if not found:
        raise FormatError("no 'Final Score: X' in the answer")
    v = float(found[-1])
    if v != int(v) or not lo <= v <= hi:
        raise FormatError(f"final score {found[-1]} is not an integer in {lo}-{hi}")
    return {"score": float(v)}


def flag(row: dict[str, Any], key: str) -> bool:
    """A row flag: set when present and not null / false / empty / NaN (the official reads NaN as set)."""
    v = row.get(key)
    if v is None or v is False or v == "" or v == 0:
        return False
    return not (isinstance(v, float) and math.isnan(v))


def _json_path(data: str) -> Path:
    p = Path(data)
    if p.is_file():
        return p
    for name in JSON_NAMES:
        if (p / name).is_file():
            return p / name
    raise FileNotFoundError(f"risebench: {p} holds none of {list(JSON_NAMES)}")


def _resolver(root: Path) -> Any:
    def resolve(rel: str) -> Path:
        for base in (root, root / "data"):
            if (base / rel).is_file():
                return base / rel
        raise FileNotFoundError(f"risebench: image {rel!r} not found under {root} or {root / 'data'}")

    return resolve


class RISEBench:
    name = "risebench"
    title = "RISEBench"
    headline = "accuracy"
    scale = "%"
    default_judge = "gpt-4.1-2025-04-14"

    def load(self, data: str, cfg: BenchmarksConfig) -> Loaded:
        path = _json_path(data)
        resolve = _resolver(path.parent)
        items = []
        for row in json.loads(path.read_text()):
            cat = row["category"]
            if cat not in CATEGORIES:
                raise ValueError(f"risebench: item {row.get('index')!r} has unknown category {cat!r}")
            ref_img = row.get("reference_img")
            meta = {
                "reference": row.get("reference_txt") or row.get("reference") or "",
                "reference_img": str(resolve(ref_img)) if isinstance(ref_img, str) and ref_img else "",
                "subtask": row.get("subtask") or "",
                "reasoning_img": flag(row, "reasoning_img"),
                "consistency_free": flag(row, "consistency_free"),
                "reasoning_wo_ins": flag(row, "reasoning_wo_ins"),
            }
            if cat == "logical_reasoning" and not (meta["reference"] or meta["reference_img"]):
                raise ValueError(f"risebench: logical item {row['index']!r} has no reference")
            src = resolve(row["image"])
            items.append(BenchItem(str(row["index"]), cat, row["instruction"], partial(png_of, src), meta))
        return Loaded(items, {})

    def output_path(self, run_dir: Path, item: BenchItem) -> Path:
        return run_dir / "images" / item.category / f"{item.item_id}.png"

    def write_output(self, run_dir: Path, item: BenchItem, edited_png: bytes, source_png: bytes) -> None:
        write_png(self.output_path(run_dir, item), edited_png)

    def find_output(self, run_dir: Path, item: BenchItem) -> Path | None:
        for ext in ("png", "jpg", "jpeg"):  # as the official find_image
            p = run_dir / "images" / item.category / f"{item.item_id}.{ext}"
            if p.is_file():
                return p
        return None

    def judge_calls(self, item: BenchItem, edited: bytes, source_png: bytes) -> list[JudgeCall]:
        m, ins = item.meta, item.instruction
        out = image_part(jpeg_of(edited, max_side=MAX_SIDE), "image/jpeg")
        src = image_part(jpeg_of(source_png, max_side=MAX_SIDE), "image/jpeg")
        ref = None  # a reference image replaces the input for spatial and logical rows, as in gpt_eval.py
        if m["reference_img"] and item.category in ("spatial_reasoning", "logical_reasoning"):
            ref = image_part(jpeg_of(Path(m["reference_img"]), max_side=MAX_SIDE), "image/jpeg")
        first, first_name = (ref, "REFERENCE image (the correct result)") if ref else (src, "INPUT image")
        logical = item.category == "logical_reasoning"
        lo = 0 if logical else 1
        hi = 1 if logical else 5

        def call(name: str, prompt: str, images: list[dict[str, Any]]) -> JudgeCall:
            content = [text_part(prompt), *images]
            return JudgeCall(name, [{"role": "user", "content": content}], lambda raw: parse_final(raw, lo, hi))

        calls = []
        if not m["consistency_free"]:
            if logical:
                answer = f' Its correct answer is: "{m["reference"]}".' if m["reference"] and not ref else ""
                prompt = LOGICAL_CONSISTENCY.format(first=first_name, instruction=ins, answer=answer)
            else:
                prompt = CONSISTENCY.format(first=first_name, instruction=ins)
            calls.append(call("consistency", prompt, [first, out]))
        if logical:
            if ref:
                shown = "The first image shows the correct solution, the second the model's output."
                if m["reasoning_wo_ins"]:
                    shown += " Compare the two solutions directly."
                calls.append(call("reasoning", LOGICAL_REASONING.format(instruction=ins, shown=shown), [ref, out]))
            else:
                shown = f'The correct answer is: "{m["reference"]}". The image is the model\'s output.'
                calls.append(call("reasoning", LOGICAL_REASONING.format(instruction=ins, shown=shown), [out]))
            return calls
        if ref:
            calls.append(call("reasoning", REASONING_REF_IMG.format(instruction=ins), [ref, out]))
        elif m["reasoning_img"]:
            shown = "The first image is the input, the second the model's output."
            prompt = REASONING.format(instruction=ins, reference=m["reference"], shown=shown)
            calls.append(call("reasoning", prompt, [src, out]))
        else:
            prompt = REASONING.format(instruction=ins, reference=m["reference"], shown="The image is the output.")
            calls.append(call("reasoning", prompt, [out]))
        calls.append(call("plausibility", PLAUSIBILITY, [out]))
        return calls

    def item_scores(self, item: BenchItem, answers: dict[str, dict[str, float]]) -> ScoredItem:
        logical = item.category == "logical_reasoning"
        dims: dict[str, float] = {k: answers[k]["score"] for k in DIMENSIONS if k in answers}
        if logical:  # binary answers on the 1-5 scale, as 4 * min(x, 1) + 1
            dims = {k: 4 * min(v, 1) + 1 for k, v in dims.items()}
        c, r, vp = dims.get("consistency"), dims["reasoning"], dims.get("plausibility")
        if logical:
            s = r if c is None else 0.3 * c + 0.7 * r
        elif c is None:
            s = 0.2 * (vp or 0) + 0.8 * r
        else:
            s = 0.3 * c + 0.5 * r + 0.2 * (vp or 0)
        if r == 1:
            s = max(1.0, s * 0.5)
        full = all(v == 5 for v in dims.values())
        values: dict[str, float] = {**dims, "score": s, "accuracy": 100.0 if full else 0.0}
        return ScoredItem(item.item_id, item.category, values, {"subtask": item.meta["subtask"]})

    def metrics(self, scored: list[ScoredItem]) -> dict[str, float]:
        score = mean([s.values["score"] for s in scored])
        out = {"accuracy": mean([s.values["accuracy"] for s in scored]), "score": score, "score_pct": 25 * (score - 1)}
        for dim in DIMENSIONS:
            vals = [s.values[dim] for s in scored if dim in s.values]
            if vals:
                out[dim] = mean(vals)
        return out

    def breakdown(self, scored: list[ScoredItem]) -> dict[str, dict[str, dict[str, float]]]:
        def summary(g: list[ScoredItem]) -> dict[str, float]:
            score = mean([s.values["score"] for s in g])
            acc = mean([s.values["accuracy"] for s in g])
            return {"accuracy": acc, "score": score, "score_pct": 25 * (score - 1), "n": float(len(g))}

        out: dict[str, dict[str, dict[str, float]]] = {
            "category": {c: summary(g) for c, g in by(scored, lambda s: s.category).items()}
        }
        with_subtask = [s for s in scored if s.tags.get("subtask")]
        if with_subtask:
            out["subtask"] = {t: summary(g) for t, g in by(with_subtask, lambda s: s.tags["subtask"]).items()}
        return out
