"""Edit tasks: a source scene, one edit operation, the target scene and an instruction in one style."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from editthinker.world import language as lang
from editthinker.world.scene import BACKGROUNDS, SHAPE_COLOURS, SHAPES, SIZES, Scene, Shape, random_scene

STYLES = ("canonical", "paraphrase", "relative", "indirect", "vague")


@dataclass(frozen=True)
class EditOp:
    """One edit: the op, the shape it acts on (None for add/background) and the new values."""

    op: str
    subject: Shape | None
    values: dict[str, str]

    def to_json(self) -> str:
        subj = None if self.subject is None else self.subject.__dict__
        return json.dumps({"op": self.op, "subject": subj, "values": self.values}, sort_keys=True)

    @staticmethod
    def from_json(text: str) -> EditOp:
        d = json.loads(text)
        return EditOp(d["op"], None if d["subject"] is None else Shape(**d["subject"]), d["values"])


def apply_op(scene: Scene, op: EditOp) -> Scene:
    """The scene after the edit. Raises ValueError when the edit does not fit the scene."""
    s = op.subject
    if op.op == "background":
        return Scene(op.values["colour"], scene.shapes)
    if op.op == "add":
        v = op.values
        if v["pos"] not in scene.free_positions():
            raise ValueError(f"position {v['pos']!r} is taken")
        return Scene(scene.background, (*scene.shapes, Shape(v["shape"], v["colour"], v["size"], v["pos"]))).canonical()
    if s is None or s not in scene.shapes:
        raise ValueError(f"{op.op}: no such shape in the scene")
    if op.op == "remove":
        return scene.replace_shape(s, None)
    if op.op == "recolor":
        return scene.replace_shape(s, Shape(s.shape, op.values["colour"], s.size, s.position))
    if op.op == "resize":
        return scene.replace_shape(s, Shape(s.shape, s.colour, op.values["size"], s.position))
    if op.op == "move":
        if op.values["pos"] not in scene.free_positions():
            raise ValueError(f"position {op.values['pos']!r} is taken")
        return scene.replace_shape(s, Shape(s.shape, s.colour, s.size, op.values["pos"]))
    raise ValueError(f"unknown op {op.op!r}")


def canonical_instruction(op: EditOp, variant: int = 0) -> str:
    """The canonical wording of an edit; `variant` cycles through the canonical rewordings."""
    options = [t for t in lang.TEMPLATES if t.op == op.op and t.style == "canonical"]
    return _write(options[variant % len(options)], op, "colour_shape", indirect=False)


def _write(t: lang.Template, op: EditOp, ref_kind: str, indirect: bool) -> str:
    slots: dict[str, str] = {}
    if op.subject is not None:
        slots["obj"] = lang.ref_phrase(ref_kind, op.subject)
    for k, v in op.values.items():
        slots[k] = lang.colour_phrase(v, indirect) if k == "colour" else v
    needed = {name for name in ("obj", "colour", "pos", "size", "shape") if "{" + name + "}" in t.text}
    return lang.fill(t, **{k: v for k, v in slots.items() if k in needed})


@dataclass(frozen=True)
class Task:
    task_id: str
    source: Scene
    op: EditOp
    target: Scene
    style: str
    instruction: str

    def metadata(self) -> str:
        """The world's own fields of the task as a record's `metadata` JSON object: op, style and source scene (its
        target scene is the record's privileged `reference`)."""
        fields = {"op": self.op.op, "style": self.style, "source_scene": json.loads(self.source.to_json())}
        return json.dumps(fields, sort_keys=True, separators=(",", ":"))


def _random_op(rng: np.random.Generator, scene: Scene) -> EditOp:
    free = scene.free_positions()
    ops = ["recolor", "resize", "remove", "background"]
    if free:
        ops += ["move", "add"]
    if len(scene.shapes) <= 1:
        ops.remove("remove")
    op = str(rng.choice(ops))
    if op == "background":
        return EditOp(op, None, {"colour": str(rng.choice([b for b in BACKGROUNDS if b != scene.background]))})
    if op == "add":
        used = {(s.shape, s.colour) for s in scene.shapes}
        pairs = [(sh, c) for sh in SHAPES for c in SHAPE_COLOURS if (sh, c) not in used]
        sh, c = pairs[int(rng.integers(len(pairs)))]
        return EditOp(
            op, None, {"size": str(rng.choice(SIZES)), "colour": c, "shape": sh, "pos": str(rng.choice(free))}
        )
    subject = scene.shapes[int(rng.integers(len(scene.shapes)))]
    if op == "recolor":
        used = {(s.shape, s.colour) for s in scene.shapes}
        colours = [c for c in SHAPE_COLOURS if (subject.shape, c) not in used]
        return EditOp(op, subject, {"colour": str(rng.choice(colours))})
    if op == "resize":
        return EditOp(op, subject, {"size": str(rng.choice([z for z in SIZES if z != subject.size]))})
    if op == "move":
        return EditOp(op, subject, {"pos": str(rng.choice(free))})
    return EditOp(op, subject, {})


def _phrase(rng: np.random.Generator, op: EditOp, scene: Scene, style: str) -> tuple[str, str]:
    """(style actually used, instruction). Styles that do not fit the op fall back to paraphrase."""
    by_style = {
        s: [t for t in lang.TEMPLATES if t.op == op.op and t.style == s] for s in ("canonical", "paraphrase", "vague")
    }
    if style == "indirect" and "colour" not in op.values:
        style = "relative" if op.subject is not None else "paraphrase"
    if style == "relative":
        kinds = [k for k in lang.refs_for(op.subject, scene) if k != "colour_shape"] if op.subject else []
        if not kinds:
            style = "paraphrase"
        else:
            t = by_style["canonical"][int(rng.integers(len(by_style["canonical"])))]
            return style, _write(t, op, str(rng.choice(kinds)), indirect=False)
    if style == "indirect":
        t = by_style["canonical"][int(rng.integers(len(by_style["canonical"])))]
        return style, _write(t, op, "colour_shape", indirect=True)
    pool = by_style[style]
    return style, _write(pool[int(rng.integers(len(pool)))], op, "colour_shape", indirect=False)


# The world's scenes are cut in two by a hash of the scene: training data (generate, the synthetic source) only
# ever draws scenes of one part, the held-out benchmark (evaluate) only of the other, so no benchmark task
# starts from a scene the thinker was trained on, whatever the seeds and sizes of either.
PARTITIONS = ("train", "held_out")


def scene_partition(scene: Scene) -> str:
    """The part of scene space `scene` belongs to: a pure function of the scene (about half each)."""
    return PARTITIONS[hashlib.sha256(scene.to_json().encode()).digest()[0] >> 7]


def make_task(seed: int, index: int, min_shapes: int, max_shapes: int, style_weights: dict[str, float],
              partition: str = "train") -> Task:  # fmt: skip
    """Task `index` of the world seeded by `seed`, its source scene drawn from `partition` (scenes of the other
    part are drawn again): a pure function of its arguments."""
    if partition not in PARTITIONS:
        raise ValueError(f"partition must be one of {PARTITIONS}, not {partition!r}")
    rng = np.random.default_rng([seed, index])
    scene = random_scene(rng, min_shapes, max_shapes)
    while scene_partition(scene) != partition:
        scene = random_scene(rng, min_shapes, max_shapes)
    op = _random_op(rng, scene)
    styles = sorted(style_weights)  # the draw must not depend on the order keys were written in
    p = np.array([style_weights[s] for s in styles], dtype=float)
    style = str(rng.choice(styles, p=p / p.sum()))
    style, text = _phrase(rng, op, scene, style)
    digest = hashlib.sha256(f"{seed}:{index}".encode()).hexdigest()[:12]
    return Task(f"t{seed}-{index:06d}-{digest}", scene, op, apply_op(scene, op), style, text)


def make_tasks(
    seed: int,
    indices: Iterable[int],
    min_shapes: int,
    max_shapes: int,
    style_weights: dict[str, float],
    partition: str = "train",
) -> dict[int, Task]:
    """The tasks at `indices` of the world seeded by `seed`, by index (each one `make_task`)."""
    return {i: make_task(seed, i, min_shapes, max_shapes, style_weights, partition) for i in indices}
