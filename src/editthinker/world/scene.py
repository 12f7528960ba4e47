"""Procedural scenes: flat-coloured shapes on a 3x3 grid, rendered exactly with PIL.

A scene is plain data (JSON-serialisable). Shapes sit in distinct grid cells, so they never
overlap and the judge can recover every object from the pixels exactly.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field, replace

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
    "black": (20, 20, 20),
    "white": (250, 250, 250),
    "gray": (128, 128, 128),
}
SHAPE_COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "black")
BACKGROUNDS = ("white", "gray")
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "medium", "large")
SIZE_FRACTION = {"small": 0.45, "medium": 0.7, "large": 0.95}  # of a grid cell's side
POSITIONS = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip


@dataclass(frozen=True, order=True)
class Shape:
    shape: str
    colour: str
    size: str
    position: str

    @property
    def cell(self) -> tuple[int, int]:
        """(row, col) of the shape's grid cell."""
        i = POSITIONS.index(self.position)
        return divmod(i, 3)

    def describe(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    background: str
    shapes: tuple[Shape, ...] = field(default_factory=tuple)

    def canonical(self) -> Scene:
        """The same scene with shapes in a fixed order (two equal scenes compare equal)."""
        return Scene(self.background, tuple(sorted(self.shapes, key=lambda s: POSITIONS.index(s.position))))

    def to_json(self) -> str:
        c = self.canonical()
        return json.dumps({"background": c.background, "shapes": [asdict(s) for s in c.shapes]}, sort_keys=True)

    @staticmethod
    def from_json(text: str) -> Scene:
        d = json.loads(text)
        return Scene(d["background"], tuple(Shape(**s) for s in d["shapes"])).canonical()

    def free_positions(self) -> list[str]:
        used = {s.position for s in self.shapes}
        return [p for p in POSITIONS if p not in used]

    def replace_shape(self, old: Shape, new: Shape | None) -> Scene:
        shapes = [s for s in self.shapes if s != old]
        if new is not None:
            shapes.append(new)
        return replace(self, shapes=tuple(shapes)).canonical()


def random_scene(rng: np.random.Generator, min_shapes: int, max_shapes: int) -> Scene:
    n = int(rng.integers(min_shapes, max_shapes + 1))
    positions = rng.choice(len(POSITIONS), size=n, replace=False)
    shapes = []
    used: set[tuple[str, str]] = set()
    for p in positions:
        # colour+shape pairs are unique within a scene so "the blue circle" names one object
        while True:
            s = (str(rng.choice(SHAPES)), str(rng.choice(SHAPE_COLOURS)))
            if s not in used:
                used.add(s)
                break
        shapes.append(Shape(s[0], s[1], str(rng.choice(SIZES)), POSITIONS[int(p)]))
    return Scene(str(rng.choice(BACKGROUNDS)), tuple(shapes)).canonical()


def _shape_box(shape: Shape, image_size: int) -> tuple[int, int, int, int]:
    cell = image_size / 3
    row, col = shape.cell
    side = max(3, int(round(cell * SIZE_FRACTION[shape.size])))
    cx = int(col * cell + cell / 2)
    cy = int(row * cell + cell / 2)
    x0, y0 = cx - side // 2, cy - side // 2
    return x0, y0, x0 + side - 1, y0 + side - 1


def render_array(scene: Scene, image_size: int) -> np.ndarray:
    """Render to an (H, W, 3) uint8 array. No anti-aliasing: every pixel has a palette colour."""
    img = Image.new("RGB", (image_size, image_size), COLOURS[scene.background])
    draw = ImageDraw.Draw(img)
    for s in scene.shapes:
        box = _shape_box(s, image_size)
        fill = COLOURS[s.colour]
        if s.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif s.shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            x0, y0, x1, y1 = box
            draw.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=fill)
    return np.asarray(img, dtype=np.uint8).copy()


def to_png(pixels: np.ndarray) -> bytes:
    """PNG bytes with no metadata, so equal pixels give equal bytes."""
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def from_png(data: bytes) -> np.ndarray:
    """Decode PNG bytes; raises ValueError on anything that is not a readable RGB image."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except Exception as exc:  # PIL raises several unrelated types
        raise ValueError(f"not a readable image: {exc}") from exc


def render_png(scene: Scene, image_size: int) -> bytes:
    return to_png(render_array(scene, image_size))
