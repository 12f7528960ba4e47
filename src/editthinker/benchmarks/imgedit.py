"""ImgEdit-Bench, basic (single-turn) suite: three 1-5 criteria per edit, mean per edit type, overall 1-5.

Data: `Benchmark/singleturn/` from HF `sysuyy/ImgEdit` (Benchmark.tar): `singleturn.json` keyed by a numeric
string, `{"id": "<folder>/<file>.jpg", "prompt", "edit_type"}`, images relative to the JSON's folder
(`--data` is that folder, or the JSON file itself, e.g. GitHub's `basic_edit.json` placed in it).
Output: one flat folder, `<run>/images/<key>.png` (the official `basic_bench.py --result_img_folder`).
Scoring: one call per item with the edit type's rubric, the original and the edited image; the answer is
`Brief reasoning: ...` then three `<Criterion>: <1-5>` lines. An item's score is the mean of its three
criteria rounded to 2 decimals (step 1); a type's score the mean of its items (step 2). The official
scripts compute no overall; `overall` here is the unweighted mean over edit types (how leaderboards appear
to report it; not documented), `item_mean` the mean over items. A failed call is never a crash nor a
guess: it is asked again, then reported as a missing score.
"""

from __future__ import annotations

import json
import re
from functools import partial
from pathlib import Path

from editthinker.benchmarks.base import (
    BenchItem,
    JudgeCall,
    Loaded,
    ScoredItem,
    by,
    image_part,
    mean,
    png_of,
    text_part,
    write_png,
)
from editthinker.config import BenchmarksConfig
from editthinker.protocol import FormatError

# per edit type: what is asked, then the three criteria (name, what 5 means, what 1 means)
_GENERIC = (
    ("Prompt Compliance", "the requested change is made fully and exactly, nothing else", "the request is ignored"),
    ("Visual Naturalness", "the result looks like an untouched photograph", "obviously manipulated or broken"),
    ("Physical & Detail Integrity", "lighting, shadows, scale, edges and fine detail are all coherent",
     "geometry, lighting or texture is badly wrong"),
)  # fmt: skip
RUBRICS: dict[str, tuple[str, tuple[tuple[str, str, str], ...]]] = {
    "add": ("add the requested object to the scene", _GENERIC),
    "remove": ("remove the requested object and fill its place plausibly", _GENERIC),
    "replace": ("replace the named object by the requested one", _GENERIC),
    "adjust": ("change the requested attribute (colour, material, shape, size) of the named object", _GENERIC),
    "background": ("change the background as requested and keep the foreground subject", _GENERIC),
    "action": ("change the pose or action of the subject as requested, keeping its identity", _GENERIC),
    "compose": ("carry out every one of the requested changes", _GENERIC),
    "style": (
        "render the whole image in the requested style",
        (
            ("Style Fidelity", "the requested style is unmistakable everywhere", "the style is absent"),
            (
                "Content Preservation",
                "every object, layout and identity of the original is kept",
                "the original content is lost",
            ),
            ("Rendering Quality", "clean, consistent rendering with no artifacts", "broken, noisy or incoherent"),
        ),
    ),  # fmt: skip
    "extract": (
        "cut out the named object alone, on a plain (white) background",
        (
            (
                "Object Selection & Identity",
                "exactly the named object, recognisably the same one",
                "the wrong object or none",
            ),
            (
                "Isolation Cleanliness",
                "a clean plain background with no leftovers of the scene",
                "the scene is still there",
            ),
            ("Object Integrity", "the object is complete, undistorted and sharp", "the object is broken or cut"),
        ),
    ),  # fmt: skip
}

TEMPLATE = """You are a strict expert judge of instruction-based image editing.
The first image is the ORIGINAL, the second the EDITED result for this instruction: "{instruction}"
The task of this edit type: {task}.
Rate the edited image on three criteria, each an integer from 1 to 5:
{criteria}
The second and the third score must not be higher than the first: an edit that does not do what was asked
cannot earn credit for looking good.
Answer in exactly this format and nothing else:
Brief reasoning: <one or two sentences>
{lines}"""


def criteria_of(edit_type: str) -> tuple[str, tuple[tuple[str, str, str], ...]]:
    if edit_type not in RUBRICS:
        raise ValueError(f"imgedit: unknown edit_type {edit_type!r}; known: {sorted(RUBRICS)}")
    return RUBRICS[edit_type]


def prompt_for(edit_type: str, instruction: str) -> str:
    task, crit = criteria_of(edit_type)
    criteria = "\n".join(f"- {n} (5: {hi}; 1: {lo})" for n, hi, lo in crit)
    lines = "\n".join(f"{n}: <1-5>" for n, _, _ in crit)
    return TEMPLATE.format(instruction=instruction, task=task, criteria=criteria, lines=lines)


_LINE = re.compile(r"^[\s*#>-]*([A-Za-z][A-Za-z &/-]*?)[\s*]*:[\s*]*(\d+)[\s*.]*$")


def parse_scores(raw: str, names: list[str]) -> dict[str, float]:
    """The three `Name: n` lines (n in 1-5). Lines named by the rubric are taken; else exactly three
    `label: digits` lines, as the official step 1 reads them. FormatError otherwise."""
    found: dict[str, int] = {}
    for line in raw.splitlines():
        m = _LINE.match(line.strip())
        if m:
            found[m.group(1).strip().lower()] = int(m.group(2))
    wanted = [n.lower() for n in names]
    if all(n in found for n in wanted):
        vals = [found[n] for n in wanted]
    elif len(found) == 3:
        vals = list(found.values())
    else:
        raise FormatError(f"expected the three score lines {names}, found {sorted(found)}")
    bad = [v for v in vals if not 1 <= v <= 5]
    if bad:
        raise FormatError(f"scores {bad} are outside 1-5")
    return {n: float(v) for n, v in zip(names, vals, strict=True)}


def _source(data: str) -> tuple[Path, Path]:
    p = Path(data)
    if p.is_file():
        return p, p.parent
    for name in ("singleturn.json", "basic_edit.json"):
        if (p / name).is_file():
            return p / name, p
    raise FileNotFoundError(f"imgedit: {p} holds neither singleturn.json nor basic_edit.json")


class ImgEdit:
    name = "imgedit"
    title = "ImgEdit-Bench"
    headline = "overall"
    scale = "1-5"
    default_judge = "gpt-4o"

    def load(self, data: str, cfg: BenchmarksConfig) -> Loaded:
        path, root = _source(data)
        table = json.loads(path.read_text())
        items, missing = [], []
        for key in sorted(table, key=lambda k: (len(k), k)):
            row = table[key]
            criteria_of(row["edit_type"])
            src = root / row["id"]
            if not src.is_file():
                missing.append(str(src))
            items.append(BenchItem(str(key), row["edit_type"], row["prompt"], partial(png_of, src), {"id": row["id"]}))
        if missing:
            raise FileNotFoundError(f"imgedit: {len(missing)} source images missing, e.g. {missing[:3]}")
        return Loaded(items, {})

    def output_path(self, run_dir: Path, item: BenchItem) -> Path:
        return run_dir / "images" / f"{item.item_id}.png"

    def write_output(self, run_dir: Path, item: BenchItem, edited_png: bytes, source_png: bytes) -> None:
        write_png(self.output_path(run_dir, item), edited_png)

    def find_output(self, run_dir: Path, item: BenchItem) -> Path | None:
        out = self.output_path(run_dir, item)
        return out if out.is_file() else None

    def judge_calls(self, item: BenchItem, edited: bytes, source_png: bytes) -> list[JudgeCall]:
        names = [n for n, _, _ in criteria_of(item.category)[1]]
        content = [text_part(prompt_for(item.category, item.instruction)), image_part(source_png, "image/png"),
                   image_part(png_of(edited), "image/png")]  # fmt: skip
        return [JudgeCall("rubric", [{"role": "user", "content": content}], lambda raw: parse_scores(raw, names))]

    def item_scores(self, item: BenchItem, answers: dict[str, dict[str, float]]) -> ScoredItem:
        crit = answers["rubric"]
        return ScoredItem(item.item_id, item.category, {"score": round(mean(list(crit.values())), 2), **crit})

    def metrics(self, scored: list[ScoredItem]) -> dict[str, float]:
        types = by(scored, lambda s: s.category).values()
        return {
            "overall": mean([mean([s.values["score"] for s in g]) for g in types]),
            "item_mean": mean([s.values["score"] for s in scored]),
        }

    def breakdown(self, scored: list[ScoredItem]) -> dict[str, dict[str, dict[str, float]]]:
        return {
            "edit_type": {
                t: {"score": mean([s.values["score"] for s in g]), "n": float(len(g))}
                for t, g in by(scored, lambda s: s.category).items()
            }
        }
