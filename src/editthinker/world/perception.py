"""Recover a scene from pixels, exactly, and measure rendering artifacts.

Shapes are flat palette colours on a flat palette background; artifacts are off-palette pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from editthinker.world.scene import COLOURS, POSITIONS, SIZE_FRACTION, SIZES, Scene, Shape

_NAMES = list(COLOURS)
_PALETTE = np.array([COLOURS[n] for n in _NAMES], dtype=np.int16)  # (K, 3)


@dataclass(frozen=True)
class Perceived:
    scene: Scene | None  # None when no consistent scene could be read
    artifact_fraction: float


def _label_map(pixels: np.ndarray) -> np.ndarray:
    """Index into the palette for every pixel, -1 for off-palette pixels."""
    diff = np.abs(pixels[:, :, None, :].astype(np.int16) - _PALETTE[None, None]).sum(-1)
    idx = diff.argmin(-1)
    idx[diff.min(-1) > 0] = -1
    return idx


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
