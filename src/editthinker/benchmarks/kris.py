"""KRIS-Bench: knowledge-based reasoning in image editing; 1-5 judge scores mapped to 0-100.

Data: `KRIS_Bench/<category>/annotation.json` keyed "1".."N" (`ori_img`, `gt_img`, `ins_en`, `explain_en`),
images beside it by bare file name; `--data` is the `KRIS_Bench` folder. The multi-image
`temporal_prediction` rows are excluded, as in the method; `multi-element_composition` gives three source
images, shown to a single-image editor side by side (params benchmarks.kris.multi_image).
Output: `<run>/<category>/<id>.jpg`: the official metrics scripts read only `.jpg` (a PNG is skipped
silently there), with `<run>` as their `results/<model>`.
Scoring: separate calls, each answering JSON with an integer 1-5: visual consistency (original(s) vs
edit), instruction following (the ground-truth image too for viewpoint_change), visual quality (the edit
alone); in the ten knowledge categories one call scores instruction following and knowledge plausibility,
with `explain_en` as the hint. The instruction shown is `ins_en` (some official versions read a key the
data lacks and show an empty one). Each score maps to (s - 1) * 25. An item's score is the mean of its
dimensions; a category's, a group's (factual / conceptual / procedural) and the overall score are means
over items. The official files hold no summary script: this aggregation follows lmms-eval's description of
it and is documented, not verified.
"""

from __future__ import annotations

import json
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
    encode,
    image_part,
    int_score,
    jpeg_of,
    json_in,
    mean,
    open_rgb,
    png_of,
    side_by_side,
    text_part,
    write_png,
)
from editthinker.config import BenchmarksConfig
from editthinker.protocol import FormatError

TYPES = {  # category -> (group, type)
    "count_change": ("factual", "attribute_perception"),
    "color_change": ("factual", "attribute_perception"),
    "size_adjustment": ("factual", "attribute_perception"),
    "part_completion": ("factual", "attribute_perception"),
    "anomaly_correction": ("factual", "attribute_perception"),
    "position_movement": ("factual", "spatial_perception"),
    "viewpoint_change": ("factual", "spatial_perception"),
    "temporal_prediction": ("factual", "temporal_prediction"),
    "practical_knowledge": ("conceptual", "social_science"),
    "humanities": ("conceptual", "social_science"),
    "biology": ("conceptual", "natural_science"),
    "chemistry": ("conceptual", "natural_science"),
    "geography": ("conceptual", "natural_science"),
    "mathematics": ("conceptual", "natural_science"),
    "medicine": ("conceptual", "natural_science"),
    "physics": ("conceptual", "natural_science"),
    "abstract_reasoning": ("procedural", "logical_reasoning"),
    "rule-based_reasoning": ("procedural", "logical_reasoning"),
    "multi-instruction_execution": ("procedural", "instruction_decomposition"),
    "multi-element_composition": ("procedural", "instruction_decomposition"),
}
KNOWLEDGE = frozenset({"abstract_reasoning", "mathematics", "practical_knowledge", "medicine", "rule-based_reasoning",
                       "biology", "geography", "chemistry", "humanities", "physics"})  # fmt: skip
EXCLUDED = {"temporal_prediction": "multi-image temporal prediction, excluded as in the method"}
DIMENSIONS = ("consistency", "instruction", "quality", "knowledge")

# doubled braces: every prompt goes through str.format once (QUALITY with no fields)
_JSON = 'Answer with JSON only: {{{{"{key}": <integer 1-5>, "reasoning": "<one or two sentences>"}}}}'
CONSISTENCY = """You are a strict judge of image edits. The instruction was: "{instruction}".
You will see the original image(s) and then the edited image. Rate VISUAL CONSISTENCY: is everything the
instruction does not ask to change kept identical (identity, layout, background, colours, details)? Ignore
whether the instruction itself was carried out.
5: nothing unrelated changed; 4: tiny differences; 3: noticeable differences; 2: large parts changed;
1: a different image. """ + _JSON.format(key="consistency_score")
INSTRUCTION = """You are a strict judge of image edits. The instruction was: "{instruction}".
You will see the original image(s){gt} and then the edited image. Rate INSTRUCTION FOLLOWING: does the edited
image carry out exactly what was asked, completely and correctly?
5: fully and exactly; 4: nearly, small omissions; 3: partly; 2: barely; 1: not at all.
""" + _JSON.format(key="instruction_score")
DUAL = """You are a strict judge of knowledge-based image edits. The instruction was: "{instruction}".
What a correct result shows, and why: "{explanation}".
You will see the original image and then the edited image. Give two integer scores from 1 to 5:
- instruction_score: does the edit carry out what was asked (5 fully and exactly ... 1 not at all)?
- knowledge_score: is the result correct and plausible given the knowledge above (5 fully correct ... 1 wrong)?
Answer with JSON only: {{"instruction_score": <1-5>, "instruction_reasoning": "...", "knowledge_score": <1-5>,
"knowledge_reasoning": "..."}}"""
QUALITY = """You are a strict judge of image quality. You will see one edited image. Rate VISUAL QUALITY:
is it sharp, natural and coherent, free of artifacts, distortions and malformed parts?
5: flawless; 4: minor flaws; 3: noticeable flaws; 2: major flaws; 1: broken. """ + _JSON.format(key="quality_score")


def parse_keys(raw: str, keys: tuple[str, ...]) -> dict[str, float]:
    """Integer 1-5 scores under `keys`, from the answer's JSON object or `key: n` lines; FormatError else."""
    try:
        d: dict[str, Any] = json_in(raw, "KRIS answer")
    except FormatError:
        d = {}
        for k in keys:
            m = re.search(rf"{k}\W*[:：]\s*(\d+)", raw, re.IGNORECASE)
            if m:
                d[k] = int(m.group(1))
    missing = [k for k in keys if k not in d]
    if missing:
        raise FormatError(f"no {missing} in the answer")
    return {k.removesuffix("_score"): float(int_score(d[k], 1, 5, k)) for k in keys}


def to_100(s: float) -> float:
    return (s - 1) * 25


class Kris:
    name = "kris"
    title = "KRIS-Bench"
    headline = "overall"
    scale = "0-100"
    default_judge = "gpt-4o"

    def load(self, data: str, cfg: BenchmarksConfig) -> Loaded:
        root = Path(data)
        folders = sorted(p.parent for p in root.glob("*/annotation.json"))
        if not folders:
            raise FileNotFoundError(f"kris: no <category>/annotation.json under {root}")
        items: list[BenchItem] = []
        excluded: dict[str, str] = {}
        for folder in folders:
            cat = folder.name
            table = json.loads((folder / "annotation.json").read_text())
            for key in sorted(table, key=lambda k: (len(k), k)):
                row, item_id = table[key], f"{cat}/{key}"
                ori = row["ori_img"]
                if cat in EXCLUDED:
                    excluded[item_id] = EXCLUDED[cat]
                    continue
                sources = [folder / o for o in (ori if isinstance(ori, list) else [ori])]
                if len(sources) > 1 and cfg.kris.multi_image == "exclude":
                    excluded[item_id] = f"{len(sources)} source images (params benchmarks.kris.multi_image)"
                    continue
                instruction = row.get("ins_en") or row.get("instruction") or ""
                if not instruction:
                    raise ValueError(f"kris: item {item_id} has no ins_en")
                missing = [str(s) for s in sources if not s.is_file()]
                if missing:
                    raise FileNotFoundError(f"kris: item {item_id}: source images missing: {missing}")
                gt = row.get("gt_img") or ""
                meta = {"sources": [str(s) for s in sources], "gt": str(folder / gt) if gt else "",
                        "explain": row.get("explain_en") or row.get("explain") or ""}  # fmt: skip
                load = partial(png_of, sources[0]) if len(sources) == 1 else partial(side_by_side, list(sources))
                items.append(BenchItem(item_id, cat, instruction, load, meta))
        return Loaded(items, excluded)

    def output_path(self, run_dir: Path, item: BenchItem) -> Path:
        cat, key = item.item_id.split("/", 1)
        return run_dir / cat / f"{key}.jpg"

    def write_output(self, run_dir: Path, item: BenchItem, edited_png: bytes, source_png: bytes) -> None:
        write_png(self.output_path(run_dir, item), encode(open_rgb(edited_png), "JPEG"))  # JPEG bytes: .jpg

    def find_output(self, run_dir: Path, item: BenchItem) -> Path | None:
        out = self.output_path(run_dir, item)
        return out if out.is_file() else None

    def judge_calls(self, item: BenchItem, edited: bytes, source_png: bytes) -> list[JudgeCall]:
        m, ins = item.meta, item.instruction
        originals = [image_part(jpeg_of(Path(s)), "image/jpeg") for s in m["sources"]]
        out = image_part(jpeg_of(edited), "image/jpeg")
        label = "These are the original images:" if len(originals) > 1 else "This is the original image:"

        def call(name: str, prompt: str, keys: tuple[str, ...], gt: bool = False, quality: bool = False) -> JudgeCall:
            content = [text_part(prompt)]
            if not quality:
                content += [text_part(label), *originals]
            if gt:
                content += [text_part("This is the ground-truth target image:"),
                            image_part(jpeg_of(Path(m["gt"])), "image/jpeg")]  # fmt: skip
            content += [text_part("This is the edited image:"), out]
            return JudgeCall(name, [{"role": "user", "content": content}], lambda raw: parse_keys(raw, keys))

        calls = [call("consistency", CONSISTENCY.format(instruction=ins), ("consistency_score",))]
        if item.category in KNOWLEDGE:
            prompt = DUAL.format(instruction=ins, explanation=m["explain"] or "(none given)")
            calls.append(call("dual", prompt, ("instruction_score", "knowledge_score")))
        else:
            gt = item.category == "viewpoint_change" and bool(m["gt"])
            prompt = INSTRUCTION.format(instruction=ins, gt=", the ground-truth target image" if gt else "")
            calls.append(call("instruction", prompt, ("instruction_score",), gt=gt))
        calls.append(call("quality", QUALITY.format(), ("quality_score",), quality=True))
        return calls

    def item_scores(self, item: BenchItem, answers: dict[str, dict[str, float]]) -> ScoredItem:
        raw: dict[str, float] = {}
        for a in answers.values():
            raw.update(a)
        dims = {k: to_100(raw[k]) for k in DIMENSIONS if k in raw}
        group, kind = TYPES.get(item.category, ("other", "other"))
        values = {**dims, "score": mean(list(dims.values()))}
        return ScoredItem(item.item_id, item.category, values, {"group": group, "type": kind})

    def metrics(self, scored: list[ScoredItem]) -> dict[str, float]:
        out = {"overall": mean([s.values["score"] for s in scored])}
        for dim in DIMENSIONS:
            vals = [s.values[dim] for s in scored if dim in s.values]
            if vals:
                out[dim] = mean(vals)
        for group, g in by(scored, lambda s: s.tags["group"]).items():
            out[group] = mean([s.values["score"] for s in g])
        return out

    def breakdown(self, scored: list[ScoredItem]) -> dict[str, dict[str, dict[str, float]]]:
        def summary(g: list[ScoredItem]) -> dict[str, float]:
            out = {"score": mean([s.values["score"] for s in g]), "n": float(len(g))}
            for dim in DIMENSIONS:
                vals = [s.values[dim] for s in g if dim in s.values]
                if vals:
                    out[dim] = mean(vals)
            return out

        return {
            "category": {c: summary(g) for c, g in by(scored, lambda s: s.category).items()},
            "type": {t: summary(g) for t, g in by(scored, lambda s: s.tags["type"]).items()},
        }
