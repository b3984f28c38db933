"""Triggers, stamped in uint8 pixel space (then normalised like any image).

BadEncoder's trigger on 32x32 images: the 10x10 square at rows/cols 21-30 set to white (255). Other sizes
scale it proportionally, except 224x224 where BadEncoder's own 50x50 square at 173-222 is used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PatchTrigger:
    """A solid square: top-left ``(row, col)``, side ``size`` pixels, colour ``value`` (RGB)."""

    row: int
    col: int
    size: int
    value: tuple[int, int, int] = (255, 255, 255)

    def apply(self, images: np.ndarray) -> np.ndarray:
        """images: uint8 (N, H, W, 3) -> a stamped copy."""
        out = images.copy()
        out[:, self.row : self.row + self.size, self.col : self.col + self.size, :] = np.asarray(
            self.value, dtype=np.uint8
        )
        return out


def badencoder_trigger(image_size: int) -> PatchTrigger:
    if image_size == 224:
        return PatchTrigger(173, 173, 50)
    start, size = round(21 * image_size / 32), max(1, round(10 * image_size / 32))
    return PatchTrigger(start, start, size)


TRIGGERS = {"badencoder": badencoder_trigger}


def make_trigger(name: str, image_size: int) -> PatchTrigger:
    if name not in TRIGGERS:
        raise ValueError(f"unknown trigger {name!r}; valid: {', '.join(TRIGGERS)}")
    return TRIGGERS[name](image_size)
