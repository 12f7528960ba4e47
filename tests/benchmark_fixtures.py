"""Tiny copies of the four benchmarks in their distributed formats, a stand-in editor and a scripted judge.

Every item gets its own image size (about 64 px), so the scripted judge can tell which item a request is
about even when the prompt holds no instruction (GEdit PQ, RISEBench plausibility, KRIS quality): it reads
the size of the last image of the request. `ANSWERS` holds the judge's scripted answers per benchmark, item
and call; the tests compute the expected aggregates from them by hand.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from editthinker.roles import EditRequest
from openai_stub import Action, Answer


def image(size: tuple[int, int], colour: tuple[int, int, int], fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format=fmt)
    return buf.getvalue()


def _save(path: Path, size: tuple[int, int], colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}[path.suffix]
    path.write_bytes(image(size, colour, fmt))


class StandInEditor:
    """Works on any image: paints a square whose colour depends on the instruction; keeps the size. Counts
    requests; `crash_after` raises KeyboardInterrupt (a kill) on the call that would exceed that many edits."""

    def __init__(self, name: str = "stand-in", crash_after: int | None = None):
        self.name, self.model_id = name, "test/stand-in-editor"
        self.requests: list[EditRequest] = []
        self.crash_after = crash_after

    def edit(self, requests: list[EditRequest]) -> list[bytes]:
        if self.crash_after is not None and len(self.requests) + len(requests) > self.crash_after:
            raise KeyboardInterrupt("killed")
        self.requests += requests
        out = []
        for r in requests:
            with Image.open(io.BytesIO(r.source_png)) as src:
                im = src.convert("RGB")
            colour = tuple(hashlib.sha256(r.instruction.encode()).digest()[:3])
            im.paste(colour, (4, 4, 20, 20))
            buf = io.BytesIO()
            im.save(buf, format="PNG")
            out.append(buf.getvalue())
        return out


# -- GEdit: save_to_disk arrow folder -------------------------------------------------------------------
GEDIT = [  # key, task_type, instruction, size, intersection
    ("k1", "background_change", "make the background a sunny beach", (64, 64), True),
    ("k2", "background_change", "put the scene on the moon surface", (64, 48), False),
    ("k3", "color_alter", "paint the car bright red", (48, 64), True),
    ("k4", "subject-add", "add a small dog on the left", (56, 64), False),
]


def write_gedit(root: Path, rows: list[tuple[str, str, str, bytes, bool]] | None = None) -> Path:
    """A GEdit-Bench folder as `save_to_disk` writes it: the EN rows and a CN copy of each."""
    import datasets

    if rows is None:
        rows = [(k, t, ins, image(size, (40 * i + 30, 90, 160)), inter)
                for i, (k, t, ins, size, inter) in enumerate(GEDIT)]  # fmt: skip
    cols: dict[str, list[Any]] = {c: [] for c in ("task_type", "key", "instruction", "instruction_language",
                                                  "input_image", "input_image_raw", "Intersection_exist")}  # fmt: skip
    for lang in ("en", "cn"):
        for key, task, ins, png, inter in rows:
            im = Image.open(io.BytesIO(png))
            for c, v in zip(
                cols, (task, key, ins if lang == "en" else f"中文 {ins}", lang, im, im, inter), strict=True
            ):
                cols[c].append(v)
    features = datasets.Features({
        "task_type": datasets.Value("string"), "key": datasets.Value("string"),
        "instruction": datasets.Value("string"), "instruction_language": datasets.Value("string"),
        "input_image": datasets.Image(), "input_image_raw": datasets.Image(),
        "Intersection_exist": datasets.Value("bool"),
    })  # fmt: skip
    datasets.Dataset.from_dict(cols, features=features).save_to_disk(str(root))
    return root


# -- ImgEdit: singleturn.json + image folders -----------------------------------------------------------
IMGEDIT = {  # key -> (source id, edit_type, prompt)
    "22": ("animal/1.jpg", "add", "add a red hat to the cat"),
    "105": ("daily object/2.jpg", "add", "add a spoon next to the cup"),
    "1166": ("style/3.jpg", "style", "render it as a watercolour painting"),
    "1168": ("animal/1.jpg", "replace", "replace the cat with a brown dog"),
}
IMGEDIT_SIZES = {"animal/1.jpg": (64, 64), "daily object/2.jpg": (64, 48), "style/3.jpg": (48, 64)}


def write_imgedit(root: Path) -> Path:
    for i, (rel, size) in enumerate(IMGEDIT_SIZES.items()):
        _save(root / rel, size, (200, 60 * i, 40))
    table = {k: {"id": rel, "edit_type": t, "prompt": p} for k, (rel, t, p) in IMGEDIT.items()}
    (root / "singleturn.json").write_text(json.dumps(table))
    return root


# -- RISEBench: data_total.json (64-item schema) and the 360-item schema ------------------------------------
RISE = [  # index, category, instruction, size, reference fields
    ("temporal_reasoning_1", "temporal_reasoning", "show this apple after a month", (64, 64),
     {"reference": "a rotten apple"}),
    ("causal_reasoning_1", "causal_reasoning", "show the glass after it falls", (64, 48),
     {"reference": "a shattered glass"}),
    ("spatial_reasoning_1", "spatial_reasoning", "assemble the parts into a chair", (48, 64),
     {"reference": "a chair"}),
    ("logical_reasoning_1", "logical_reasoning", "solve the maze", (56, 64),
     {"reference_img": "logical_reasoning_images/1_ref.png"}),
    ("logical_reasoning_2", "logical_reasoning", "write the sum in the box", (64, 56),
     {"reference_txt": "42"}),
]  # fmt: skip


def write_risebench(root: Path, schema: str = "64") -> Path:
    """`root/data/data_total.json` (64) or `root/datav2_total_w_subtask.json` + `root/data/...` (360)."""
    data = root / "data"
    rows = []
    for i, (index, cat, ins, size, ref) in enumerate(RISE):
        n = index.rsplit("_", 1)[1]
        _save(data / f"{cat}_images" / f"{n}.png", size, (30, 100 + 30 * i, 200))
        row: dict[str, Any] = {"index": index, "category": cat, "instruction": ins,
                               "image": f"{cat}_images/{n}.png", **ref}  # fmt: skip
        if "reference_img" in ref:
            _save(data / ref["reference_img"], size, (0, 0, 0))
        if schema == "360":
            row["subtask"] = {"temporal_reasoning": "Life Progression", "causal_reasoning": "Structural Deformation",
                              "spatial_reasoning": "Component Assembly"}.get(cat, "Puzzle Solving")  # fmt: skip
            if cat == "temporal_reasoning":
                row["consistency_free"] = True
            if cat == "causal_reasoning":
                row["reasoning_img"] = True
        rows.append(row)
    path = data / "data_total.json" if schema == "64" else root / "datav2_total_w_subtask.json"
    path.write_text(json.dumps(rows))
    return path


# -- KRIS-Bench: <category>/annotation.json + images -------------------------------------------------------
KRIS = [  # category, id, ori_img, instruction, size, extra annotation fields
    ("color_change", "1", "1.jpg", "change the pepper to yellow", (64, 64), {}),
    ("color_change", "2", "2.png", "make the sky purple", (64, 48), {}),
    ("biology", "1", "1.jpeg", "show this tadpole as an adult", (48, 64),
     {"explain_en": "a tadpole grows into a frog"}),
    ("viewpoint_change", "1", "1.jpg", "show the cup from above", (56, 64), {"gt_img": "1_gt.jpg"}),
    ("multi-element_composition", "1", ["1-1.jpg", "1-2.jpg", "1-3.jpg"], "put the hat and the shoes on the man",
     (64, 64), {}),
    ("temporal_prediction", "1", ["1-1.jpg", "1-2.jpg", "1-3.jpg"], "what comes between", (64, 64),
     {"gt_img": "1-4.jpg"}),
]  # fmt: skip


def write_kris(root: Path) -> Path:
    tables: dict[str, dict[str, Any]] = {}
    for i, (cat, key, ori, ins, size, extra) in enumerate(KRIS):
        for name in ori if isinstance(ori, list) else [ori]:
            _save(root / cat / name, size, (10 + 35 * i, 200, 90))
        if extra.get("gt_img"):
            _save(root / cat / extra["gt_img"], size, (255, 255, 0))
        row = {"ori_img": ori, "gt_img": "", "ins_en": ins, "explain_en": "", **extra}
        tables.setdefault(cat, {})[key] = row
    for cat, table in tables.items():
        (root / cat / "annotation.json").write_text(json.dumps(table))
    return root


# -- the scripted judge ---------------------------------------------------------------------------------
def _final(n: int) -> str:
    return f"The output was checked against the instruction.\nFinal Score: {n}"


def _rubric(a: int, b: int, c: int, names: tuple[str, str, str]) -> str:
    return f"Brief reasoning: checked.\n{names[0]}: {a}\n{names[1]}: {b}\n{names[2]}: {c}"


GENERIC = ("Prompt Compliance", "Visual Naturalness", "Physical & Detail Integrity")
STYLE = ("Style Fidelity", "Content Preservation", "Rendering Quality")

ANSWERS: dict[str, dict[str, dict[str, str]]] = {
    "gedit": {
        "k1": {"sc": '{"score": [8, 6], "reasoning": "ok"}', "pq": '{"score": [9, 7], "reasoning": "ok"}'},
        "k2": {"sc": '{"score": [4, 9], "reasoning": "ok"}', "pq": '{"score": [8, 8], "reasoning": "ok"}'},
        "k3": {"sc": '```json\n{"score": [10, 10], "reasoning": "ok"}\n```', "pq": '{"score": [6, 9]}'},
        "k4": {"sc": '{"score": [2, 7], "reasoning": "ok"}', "pq": '{"score": [10, 10], "reasoning": "ok"}'},
    },
    "imgedit": {
        "22": {"rubric": _rubric(5, 4, 4, GENERIC)},
        "105": {"rubric": _rubric(3, 3, 2, GENERIC)},
        "1166": {"rubric": _rubric(4, 4, 4, STYLE)},
        "1168": {"rubric": _rubric(2, 1, 1, GENERIC)},
    },
    "risebench": {
        "temporal_reasoning_1": {"consistency": _final(5), "reasoning": _final(5), "plausibility": _final(5)},
        "causal_reasoning_1": {"consistency": _final(4), "reasoning": _final(5), "plausibility": _final(5)},
        "spatial_reasoning_1": {"consistency": _final(3), "reasoning": _final(1), "plausibility": _final(4)},
        "logical_reasoning_1": {"consistency": _final(1), "reasoning": _final(1)},
        "logical_reasoning_2": {"consistency": _final(1), "reasoning": _final(0)},
    },
    "kris": {
        "color_change/1": {"consistency": '{"consistency_score": 5, "reasoning": "same"}',
                           "instruction": 'Here: {"instruction_score": 4, "reasoning": "mostly"}',
                           "quality": '{"quality_score": 3, "reasoning": "soft"}'},
        "color_change/2": {"consistency": '{"consistency_score": 3}', "instruction": '{"instruction_score": 3}',
                           "quality": '{"quality_score": 3}'},
        "biology/1": {"consistency": '{"consistency_score": 4}', "quality": '{"quality_score": 5}',
                      "dual": '{"instruction_score": 2, "instruction_reasoning": "a", "knowledge_score": 3, '
                              '"knowledge_reasoning": "b"}'},
        "viewpoint_change/1": {"consistency": '{"consistency_score": 2}', "instruction": '{"instruction_score": 5}',
                               "quality": '{"quality_score": 4}'},
        "multi-element_composition/1": {"consistency": '{"consistency_score": 1}',
                                        "instruction": '{"instruction_score": 1}', "quality": '{"quality_score": 1}'},
    },
}  # fmt: skip

CALL_MARKERS = [  # text in the prompt -> call name
    ("editing success", "sc"), ("naturalness:", "pq"), ("Brief reasoning", "rubric"),
    ("APPEARANCE CONSISTENCY", "consistency"), ("keeps the puzzle itself intact", "consistency"),
    ("INSTRUCTION REASONING", "reasoning"), ("solution shown in the output", "reasoning"),
    ("VISUAL PLAUSIBILITY", "plausibility"), ("VISUAL CONSISTENCY", "consistency"), ("knowledge_score", "dual"),
    ("INSTRUCTION FOLLOWING", "instruction"), ("VISUAL QUALITY", "quality"),
]  # fmt: skip


def instructions(benchmark: str) -> dict[str, str]:
    """instruction -> item id."""
    if benchmark == "gedit":
        return {ins: k for k, _, ins, _, _ in GEDIT}
    if benchmark == "imgedit":
        return {p: k for k, (_, _, p) in IMGEDIT.items()}
    if benchmark == "risebench":
        return {ins: i for i, _, ins, _, _ in RISE}
    return {ins: f"{c}/{k}" for c, k, _, ins, _, _ in KRIS}


def sizes(benchmark: str) -> dict[tuple[int, int], str]:
    """size of the edited image -> item id (items whose size is unique)."""
    if benchmark == "gedit":
        return {s: k for k, _, _, s, _ in GEDIT}
    if benchmark == "imgedit":
        return {}
    if benchmark == "risebench":
        return {s: i for i, _, _, s, _ in RISE}
    out = {s: f"{c}/{k}" for c, k, o, _, s, _ in KRIS if not isinstance(o, list)}
    return out | {(192, 64): "multi-element_composition/1"}


def request_of(body: dict[str, Any]) -> tuple[str, list[bytes]]:
    """The text and the decoded images of a chat request."""
    texts, images = [], []
    for msg in body["messages"]:
        content = msg["content"]
        for part in [content] if isinstance(content, str) else content:
            if isinstance(part, str):
                texts.append(part)
            elif part["type"] == "text":
                texts.append(part["text"])
            else:
                images.append(base64.b64decode(part["image_url"]["url"].split(",", 1)[1]))
    return "\n".join(texts), images


def identify(benchmark: str, body: dict[str, Any]) -> tuple[str, str]:
    """(item id, call name) of a judge request."""
    text, images = request_of(body)
    call = next(name for marker, name in CALL_MARKERS if marker in text)
    for ins, item in instructions(benchmark).items():
        if re.search(re.escape(ins), text):
            return item, call
    with Image.open(io.BytesIO(images[-1])) as im:
        return sizes(benchmark)[im.size], call


def scripted_judge(benchmark: str, answers: dict[str, dict[str, str]] | None = None) -> Callable[[dict], Action]:
    table = answers or ANSWERS[benchmark]

    def respond(body: dict[str, Any]) -> Action:
        item, call = identify(benchmark, body)
        return Answer(table[item][call])

    return respond


WRITERS = {"gedit": write_gedit, "imgedit": write_imgedit, "risebench": write_risebench, "kris": write_kris}


def write(benchmark: str, root: Path) -> str:
    """Write the benchmark's fixture under root; the path to pass as --data."""
    if benchmark == "risebench":
        write_risebench(root)
        return str(root)
    return str(WRITERS[benchmark](root))


def write_world_gedit(root: Path, n: int = 4) -> list[Any]:
    """A GEdit-format copy of n synthetic-world tasks (64 px scenes, canonical wording): the synthetic editors
    really edit these. Returns the tasks, keyed w0.. in order."""
    from editthinker.world.scene import render_png
    from editthinker.world.tasks import make_task

    tasks = [make_task(77, i, 2, 4, {"canonical": 1.0}) for i in range(n)]
    rows = [(f"w{i}", t.op.op, t.instruction, render_png(t.source, 64), i % 2 == 0) for i, t in enumerate(tasks)]
    write_gedit(root, rows)
    return tasks
