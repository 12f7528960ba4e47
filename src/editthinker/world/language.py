"""The instruction language of the synthetic world: one template table that both writes and reads.

Every instruction is a template with slots ({obj}, {colour}, {pos}, {size}, {shape}). Writing fills the
slots; reading matches the same templates as regular expressions. An editor "knows" a subset of the
templates, object references and indirect colour phrases, which is what makes wording matter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from editthinker.world.scene import POSITIONS, SHAPES, SIZES, Scene, Shape

INDIRECT_COLOURS: dict[str, str] = {
    "red": "the colour of a ripe tomato",
    "green": "the colour of fresh grass",
    "blue": "the colour of a clear sky",
    "yellow": "the colour of a ripe banana",
    "purple": "the colour of an aubergine",
    "orange": "the colour of a carrot",
    "black": "the colour of coal",
    "white": "the colour of snow",
    "gray": "the colour of a rain cloud",
}
_INDIRECT_TO_COLOUR = {v: k for k, v in INDIRECT_COLOURS.items()}


@dataclass(frozen=True)
class Template:
    id: str
    op: str
    style: str  # canonical | paraphrase | vague
    text: str


# Canonical templates come first for each op; extra canonical ones are rewording variants that every
# editor understands (the expert uses them to ask again in other words).
TEMPLATES: tuple[Template, ...] = (
    Template("recolor.c0", "recolor", "canonical", "recolor {obj} to {colour}"),
    Template("recolor.c1", "recolor", "canonical", "change the colour of {obj} to {colour}"),
    Template("recolor.p0", "recolor", "paraphrase", "paint {obj} {colour}"),
    Template("recolor.p1", "recolor", "paraphrase", "turn {obj} {colour}"),
    Template("recolor.p2", "recolor", "paraphrase", "give {obj} a {colour} coat"),
    Template("recolor.v0", "recolor", "vague", "change the colour of {obj}"),
    Template("move.c0", "move", "canonical", "move {obj} to the {pos}"),
    Template("move.c1", "move", "canonical", "place {obj} at the {pos}"),
    Template("move.p0", "move", "paraphrase", "shift {obj} over to the {pos}"),
    Template("move.p1", "move", "paraphrase", "slide {obj} into the {pos} spot"),
    Template("move.v0", "move", "vague", "move {obj} somewhere else"),
    Template("resize.c0", "resize", "canonical", "make {obj} {size}"),
    Template("resize.c1", "resize", "canonical", "resize {obj} to {size}"),
    Template("resize.p0", "resize", "paraphrase", "scale {obj} until it is {size}"),
    Template("resize.p1", "resize", "paraphrase", "change the size of {obj} to {size}"),
    Template("resize.v0", "resize", "vague", "change the size of {obj}"),
    Template("add.c0", "add", "canonical", "add a {size} {colour} {shape} at the {pos}"),
    Template("add.c1", "add", "canonical", "insert a {size} {colour} {shape} at the {pos}"),
    Template("add.p0", "add", "paraphrase", "draw a {size} {colour} {shape} in the {pos}"),
    Template("add.p1", "add", "paraphrase", "put a {size} {colour} {shape} in the {pos} corner"),
    Template("add.v0", "add", "vague", "add another shape"),
    Template("remove.c0", "remove", "canonical", "remove {obj}"),
    Template("remove.c1", "remove", "canonical", "delete {obj}"),
    Template("remove.p0", "remove", "paraphrase", "get rid of {obj}"),
    Template("remove.p1", "remove", "paraphrase", "erase {obj} from the picture"),
    Template("remove.v0", "remove", "vague", "remove one of the shapes"),
    Template("background.c0", "background", "canonical", "change the background to {colour}"),
    Template("background.c1", "background", "canonical", "set the background colour to {colour}"),
    Template("background.p0", "background", "paraphrase", "paint the background {colour}"),
    Template("background.p1", "background", "paraphrase", "use a {colour} backdrop"),
    Template("background.v0", "background", "vague", "change the background"),
)
TEMPLATE_BY_ID = {t.id: t for t in TEMPLATES}
OPS = ("recolor", "move", "resize", "add", "remove", "background")

_COLOUR_WORDS = "red|green|blue|yellow|purple|orange|black|white|gray"
_SLOT_RE = {
    "obj": r"(?P<obj>the [a-z ]+?)",
    "colour": rf"(?P<colour>{_COLOUR_WORDS}|the colour of [a-z ]+?)",
    "pos": r"(?P<pos>" + "|".join(sorted(POSITIONS, key=len, reverse=True)) + ")",
    "size": r"(?P<size>" + "|".join(SIZES) + ")",
    "shape": r"(?P<shape>" + "|".join(SHAPES) + ")",
}


def _compile(t: Template) -> re.Pattern[str]:
    parts = re.split(r"(\{[a-z]+\})", t.text)
    rx = "".join(_SLOT_RE[p[1:-1]] if p.startswith("{") else re.escape(p) for p in parts)
    return re.compile(rf"^{rx}$")


_PATTERNS = [(t, _compile(t)) for t in TEMPLATES]

# Object references, by kind. "colour_shape" is canonical; the others are relative references.
REF_KINDS = ("colour_shape", "shape_only", "colour_only", "leftmost", "rightmost", "topmost", "bottommost",
             "largest", "smallest")  # fmt: skip
_SIZE_RANK = {s: i for i, s in enumerate(SIZES)}


def _extreme(shapes: tuple[Shape, ...], key, pick_max: bool) -> Shape | None:
    vals = [key(s) for s in shapes]
    best = max(vals) if pick_max else min(vals)
    hits = [s for s, v in zip(shapes, vals, strict=True) if v == best]
    return hits[0] if len(hits) == 1 else None


def resolve_ref(kind: str, scene: Scene, phrase_value: str | None = None) -> Shape | None:
    """The shape a reference of this kind picks out (None when it picks out no single shape)."""
    sh = scene.shapes
    if kind == "leftmost":
        return _extreme(sh, lambda s: s.cell[1], False)
    if kind == "rightmost":
        return _extreme(sh, lambda s: s.cell[1], True)
    if kind == "topmost":
        return _extreme(sh, lambda s: s.cell[0], False)
    if kind == "bottommost":
        return _extreme(sh, lambda s: s.cell[0], True)
    if kind == "largest":
        return _extreme(sh, lambda s: _SIZE_RANK[s.size], True)
    if kind == "smallest":
        return _extreme(sh, lambda s: _SIZE_RANK[s.size], False)
    if kind == "shape_only":
        hits = [s for s in sh if s.shape == phrase_value]
    elif kind == "colour_only":
        hits = [s for s in sh if s.colour == phrase_value]
    else:
        colour, _, shape = (phrase_value or "").partition(" ")
        hits = [s for s in sh if s.colour == colour and s.shape == shape]
    return hits[0] if len(hits) == 1 else None


def ref_phrase(kind: str, target: Shape) -> str:
    if kind == "colour_shape":
        return f"the {target.colour} {target.shape}"
    if kind == "shape_only":
        return f"the {target.shape}"
    if kind == "colour_only":
        return f"the {target.colour} shape"
    return f"the {kind} shape"


def parse_ref(phrase: str) -> tuple[str, str | None]:
    """(kind, value) of an object reference phrase; kind 'unknown' when it is none of ours."""
    words = phrase.split()
    if len(words) == 3 and words[0] == "the" and words[2] == "shape":
        if words[1] in REF_KINDS:
            return words[1], None
        if re.fullmatch(_COLOUR_WORDS, words[1]):
            return "colour_only", words[1]
    if len(words) == 3 and words[0] == "the" and re.fullmatch(_COLOUR_WORDS, words[1]) and words[2] in SHAPES:
        return "colour_shape", f"{words[1]} {words[2]}"
    if len(words) == 2 and words[0] == "the" and words[1] in SHAPES:
        return "shape_only", words[1]
    return "unknown", None


def refs_for(target: Shape, scene: Scene) -> list[str]:
    """Every reference kind that picks out exactly `target` in `scene`."""
    out = []
    for kind in REF_KINDS:
        value = {"shape_only": target.shape, "colour_only": target.colour}.get(kind, f"{target.colour} {target.shape}")
        if resolve_ref(kind, scene, value) == target:
            out.append(kind)
    return out


def colour_phrase(colour: str, indirect: bool) -> str:
    return INDIRECT_COLOURS[colour] if indirect else colour


def indirect_colour(phrase: str) -> str | None:
    return _INDIRECT_TO_COLOUR.get(phrase)


@dataclass(frozen=True)
class Reading:
    """What an instruction says, as read through the template table (slots still as phrases)."""

    template: Template
    slots: dict[str, str]


def read(instruction: str) -> Reading | None:
    text = " ".join(instruction.lower().strip().rstrip(".").split())
    for t, rx in _PATTERNS:
        m = rx.match(text)
        if m:
            return Reading(t, {k: v for k, v in m.groupdict().items() if v is not None})
    return None


def fill(template: Template, **slots: str) -> str:
    return template.text.format(**slots)
