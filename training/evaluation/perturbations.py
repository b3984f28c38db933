"""Benign perturbations for the honesty evaluation: conspicuous or degrading changes that are NOT the
trigger. Each is deterministic (seeded) so every run scores the same images.

Whether a case really is benign is measured, not assumed: ``dede evaluate`` reports each case's backdoor
activation rate (the share of non-target images whose kNN class becomes the target), and only cases that
do not fire the backdoor count as benign.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

Apply = Callable[[np.ndarray, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class Perturbation:
    name: str
    kind: str  # patch | texture | paste | noise | blur | jpeg
    apply: Apply


def _scale(v: int, size: int) -> int:
    return max(1, round(v * size / 32))


def solid_patch(row: int, col: int, side: int, value: tuple[int, int, int]) -> Apply:
    def f(images: np.ndarray, _: np.random.Generator) -> np.ndarray:
        out = images.copy()
        out[:, row : row + side, col : col + side] = np.asarray(value, np.uint8)
        return out

    return f


def checker_patch(row: int, col: int, side: int, cell: int) -> Apply:
    yy, xx = np.mgrid[:side, :side]
    board = (((yy // cell) + (xx // cell)) % 2 * 255).astype(np.uint8)[..., None].repeat(3, -1)

    def f(images: np.ndarray, _: np.random.Generator) -> np.ndarray:
        out = images.copy()
        out[:, row : row + side, col : col + side] = board
        return out

    return f


def noise_patch(row: int, col: int, side: int) -> Apply:
    def f(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = images.copy()
        out[:, row : row + side, col : col + side] = rng.integers(0, 256, (len(images), side, side, 3), np.uint8)
        return out

    return f


def pasted_crop(side: int) -> Apply:
    """A side x side crop of ANOTHER image of the batch pasted at a random position."""

    def f(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = images.copy()
        n, size = len(images), images.shape[1]
        donors = (np.arange(n) + 1 + rng.integers(0, max(1, n - 1), n)) % n
        for i in range(n):
            sy, sx, dy, dx = rng.integers(0, size - side + 1, 4)
            out[i, dy : dy + side, dx : dx + side] = images[donors[i], sy : sy + side, sx : sx + side]
        return out

    return f


def gaussian_noise(sigma: float) -> Apply:
    def f(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        noisy = images.astype(np.float32) + rng.normal(0, sigma, images.shape)
        return np.clip(np.round(noisy), 0, 255).astype(np.uint8)

    return f


def _per_image(fn: Callable[[Image.Image], Image.Image]) -> Apply:
    def f(images: np.ndarray, _: np.random.Generator) -> np.ndarray:
        return np.stack([np.asarray(fn(Image.fromarray(img)).convert("RGB")) for img in images])

    return f


def blur(radius: float) -> Apply:
    return _per_image(lambda im: im.filter(ImageFilter.GaussianBlur(radius)))


def jpeg(quality: int) -> Apply:
    def reencode(im: Image.Image) -> Image.Image:
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=quality)
        return Image.open(io.BytesIO(buf.getvalue()))

    return _per_image(reencode)


def benign_cases(size: int = 32) -> list[Perturbation]:
    """The honesty cases for ``size`` x ``size`` images (positions and sides scale from 32 px)."""
    s = lambda v: _scale(v, size)  # noqa: E731
    white, black, red, gray = (255, 255, 255), (0, 0, 0), (220, 30, 30), (128, 128, 128)
    return [
        Perturbation("white-10-topleft", "patch", solid_patch(s(1), s(1), s(10), white)),
        Perturbation("white-10-centre", "patch", solid_patch(s(11), s(11), s(10), white)),
        Perturbation("white-6-topright", "patch", solid_patch(s(2), s(24), s(6), white)),
        Perturbation("white-14-bottomleft", "patch", solid_patch(s(17), s(1), s(14), white)),
        Perturbation("black-10-trigger-spot", "patch", solid_patch(s(21), s(21), s(10), black)),
        Perturbation("red-10-centre", "patch", solid_patch(s(11), s(11), s(10), red)),
        Perturbation("gray-8-topleft", "patch", solid_patch(s(2), s(2), s(8), gray)),
        Perturbation("checker-10-centre", "texture", checker_patch(s(11), s(11), s(10), s(2))),
        Perturbation("noise-10-topleft", "texture", noise_patch(s(1), s(1), s(10))),
        Perturbation("pasted-crop-10", "paste", pasted_crop(s(10))),
        Perturbation("gaussian-noise-8", "noise", gaussian_noise(8.0)),
        Perturbation("gaussian-noise-16", "noise", gaussian_noise(16.0)),
        Perturbation("blur-1", "blur", blur(1.0)),
        Perturbation("jpeg-50", "jpeg", jpeg(50)),
    ]


def apply_case(case: Perturbation, images: np.ndarray, seed: int = 0) -> np.ndarray:
    """Deterministic: the same case, images and seed always give the same output."""
    return case.apply(images, np.random.default_rng(seed))
