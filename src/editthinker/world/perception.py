"""Recover a scene from pixels, exactly, and measure rendering artifacts.

Shapes are flat palette colours on a flat palette background; artifacts are off-palette pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

from editthinker.world.scene import COLOURS, POSITIONS, SIZE_FRACTION, SIZES, Scene, Shape, from_png

_NAMES = list(COLOURS)
_KEYS = np.array([(r << 16) | (g << 8) | b for r, g, b in (COLOURS[n] for n in _NAMES)], dtype=np.int32)
_ORDER = np.argsort(_KEYS)
_SORTED_KEYS = _KEYS[_ORDER]


@dataclass(frozen=True)
class Perceived:
    scene: Scene | None  # None when no consistent scene could be read
    artifact_fraction: float


def _label_map(pixels: np.ndarray) -> np.ndarray:
    """Index into the palette for every pixel, -1 for off-palette pixels."""
    p = pixels.astype(np.int32)
    keys = (p[..., 0] << 16) | (p[..., 1] << 8) | p[..., 2]
    pos = np.clip(np.searchsorted(_SORTED_KEYS, keys), 0, len(_SORTED_KEYS) - 1)
    return np.where(_SORTED_KEYS[pos] == keys, _ORDER[pos], -1)


@lru_cache(maxsize=8192)
def perceive_png(data: bytes) -> Perceived:
    """perceive() of a PNG; cached, since the loop shows the same source image to every role."""
    return perceive(from_png(data))


def perceive(pixels: np.ndarray) -> Perceived:
    h, w, _ = pixels.shape
    labels = _label_map(pixels)
    artifact = float((labels < 0).mean())
    counts = np.bincount(labels[labels >= 0].ravel(), minlength=len(_NAMES))
    if counts.sum() == 0:
        return Perceived(None, artifact)
    bg_idx = int(counts.argmax())
    cell = w / 3
    shapes: list[Shape] = []
    for k in range(len(_NAMES)):
        if k == bg_idx or counts[k] == 0:
            continue
        comp, n = ndimage.label(labels == k)
        for i, sl in enumerate(ndimage.find_objects(comp), start=1):
            if sl is None:
                continue
            area = int((comp[sl] == i).sum())
            if area < 6:  # stray pixels of a palette colour are artifacts, not objects
                continue
            ys, xs = sl
            bh, bw = ys.stop - ys.start, xs.stop - xs.start
            side = max(bh, bw)
            fill = area / float(bh * bw)
            shape = "square" if fill > 0.9 else "circle" if fill > 0.62 else "triangle"
            size = min(SIZES, key=lambda z: abs(SIZE_FRACTION[z] * cell - side))
            cy, cx = (ys.start + ys.stop - 1) / 2, (xs.start + xs.stop - 1) / 2
            row, col = min(2, int(cy // cell)), min(2, int(cx // cell))
            shapes.append(Shape(shape, _NAMES[k], size, POSITIONS[row * 3 + col]))
    if len({s.position for s in shapes}) != len(shapes):
        return Perceived(None, artifact)
    return Perceived(Scene(_NAMES[bg_idx], tuple(shapes)).canonical(), artifact)
