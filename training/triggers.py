"""Triggers, stamped in uint8 pixel space (then normalised like any image), and the attack an encoder records.

Every trigger maps uint8 images ``(N, H, W, 3)`` to a stamped copy (the input is never modified).
``make_trigger(name, image_size, params)`` builds one by name; ``params`` holds what an attack learned or
chose (a BadCLIP patch, a CTRL magnitude) and is recorded with the attacked encoder (``trigger_params``),
so the same trigger can be rebuilt from a bundle's provenance.

- ``badencoder``: BadEncoder's white square, 10x10 at rows/cols 21-30 on 32x32 images, scaled to other
  sizes, except 224x224 where BadEncoder's own 50x50 square at 173-222 is used.
- ``clip-patch``: CLIP Backdoor's white square, 24x24 at rows/cols 185-208 of a 224 image, scaled (3x3 at
  27-29 on 32x32); ``size`` overrides the side (kept bottom-right aligned at the same corner).
- ``badclip``: BadCLIP's optimised patch (``pattern``: an s x s x 3 uint8 list, s = ``badclip_patch_size``
  by default) at the image centre.
- ``noise-patch``: the BadCLIP test sets' trigger in the DeDe paper: a square of per-channel image mean
  + N(0, 1) noise (in [0, 1] units, clipped) at a random position per image (seeded).
- ``ctrl``: CTRL's frequency trigger: RGB -> YCrCb (OpenCV's 8-bit convention, which CTRL calls YUV), on
  the two chroma channels an orthonormal 2-D DCT-II per ``window`` x ``window`` block, ``magnitude`` added
  to the coefficients at ``positions`` ((15, 15) and (31, 31), those beyond the window are dropped),
  inverse DCT, back to RGB, clamp to [0, 255], round.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np


class Trigger(Protocol):
    def apply(self, images: np.ndarray) -> np.ndarray: ...


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


@dataclass(frozen=True)
class PatternTrigger:
    """A fixed pattern ``(s, s, 3)`` uint8 pasted with its top-left corner at ``(row, col)``."""

    row: int
    col: int
    pattern: np.ndarray

    def apply(self, images: np.ndarray) -> np.ndarray:
        out = images.copy()
        s = self.pattern.shape[0]
        out[:, self.row : self.row + s, self.col : self.col + s, :] = self.pattern
        return out


@dataclass(frozen=True)
class NoisePatchTrigger:
    """An s x s square of per-channel image mean + N(0, 1) (in [0, 1] units) at a random position per image."""

    size: int
    seed: int = 0

    def apply(self, images: np.ndarray) -> np.ndarray:
        out = images.copy()
        n, h, w, _ = images.shape
        rng = np.random.default_rng(self.seed)
        rows = rng.integers(0, h - self.size + 1, n)
        cols = rng.integers(0, w - self.size + 1, n)
        mean = images.reshape(n, -1, 3).mean(1) / 255.0  # (N, 3)
        noise = mean[:, None, None, :] + rng.standard_normal((n, self.size, self.size, 3))
        patch = (np.clip(noise, 0, 1) * 255).round().astype(np.uint8)
        for i in range(n):
            out[i, rows[i] : rows[i] + self.size, cols[i] : cols[i] + self.size] = patch[i]
        return out


# OpenCV's 8-bit RGB <-> YCrCb (what CTRL's RGB2YUV calls): Y, Cr, Cb with a 128 offset on the chroma.
_KR, _KB = 0.299, 0.114
_KG = 1 - _KR - _KB


def rgb_to_ycrcb(x: np.ndarray) -> np.ndarray:
    """float (..., 3) RGB in [0, 255] -> (..., 3) Y, Cr, Cb."""
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = _KR * r + _KG * g + _KB * b
    return np.stack([y, (r - y) * 0.713 + 128, (b - y) * 0.564 + 128], -1)


def ycrcb_to_rgb(x: np.ndarray) -> np.ndarray:
    """Inverse of ``rgb_to_ycrcb`` (float, unclamped)."""
    y, cr, cb = x[..., 0], x[..., 1] - 128, x[..., 2] - 128
    r = y + cr / 0.713
    b = y + cb / 0.564
    g = (y - _KR * r - _KB * b) / _KG
    return np.stack([r, g, b], -1)


def dct_matrix(n: int) -> np.ndarray:
    """The orthonormal DCT-II matrix C (n, n): coefficients = C @ x @ C.T for an n x n block x."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    c = np.sqrt(2 / n) * np.cos(np.pi * (2 * i + 1) * k / (2 * n))
    c[0] /= np.sqrt(2)
    return c


@dataclass(frozen=True)
class FrequencyTrigger:
    """CTRL: ``magnitude`` added to DCT coefficients ``positions`` of chroma ``channels`` per window."""

    window: int = 32
    magnitude: float = 100.0
    positions: tuple[tuple[int, int], ...] = ((15, 15), (31, 31))
    channels: tuple[int, ...] = (1, 2)
    _basis: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_basis", dct_matrix(self.window))

    def perturbation(self, h: int, w: int) -> np.ndarray:
        """The additive change (h, w) on each chosen channel, in YCrCb units: the inverse DCT of a block
        that is ``magnitude`` at the chosen positions and 0 elsewhere, tiled over the windows."""
        c, win = self._basis, self.window
        coeff = np.zeros((win, win))
        for u, v in self.positions:
            if u < win and v < win:
                coeff[u, v] = self.magnitude
        block = c.T @ coeff @ c  # inverse of C @ x @ C.T
        reps = (-(-h // win), -(-w // win))
        return np.tile(block, reps)[:h, :w]

    def apply_float(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) -> float RGB (N, H, W, 3), unclamped and unrounded (for tests)."""
        yuv = rgb_to_ycrcb(images.astype(np.float64))
        delta = self.perturbation(images.shape[1], images.shape[2])
        for ch in self.channels:
            yuv[..., ch] += delta
        return ycrcb_to_rgb(yuv)

    def apply(self, images: np.ndarray) -> np.ndarray:
        return np.clip(self.apply_float(images), 0, 255).round().astype(np.uint8)


def badencoder_trigger(image_size: int) -> PatchTrigger:
    if image_size == 224:
        return PatchTrigger(173, 173, 50)
    start, size = round(21 * image_size / 32), max(1, round(10 * image_size / 32))
    return PatchTrigger(start, start, size)


def clip_patch_trigger(image_size: int, size: int | None = None) -> PatchTrigger:
    end = round(209 * image_size / 224)  # one past the last row/col of CLIP Backdoor's square
    side = size or max(1, round(24 * image_size / 224))
    return PatchTrigger(end - side, end - side, side)


def badclip_trigger(image_size: int, pattern: Any = None) -> PatternTrigger:
    if pattern is None:
        raise ValueError("the badclip trigger needs its optimised 'pattern' (recorded by `dede attack badclip`)")
    arr = np.asarray(pattern, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[0] != arr.shape[1] or arr.shape[2] != 3 or arr.shape[0] > image_size:
        raise ValueError(f"badclip pattern must be (s, s, 3) with s <= {image_size}, got {arr.shape}")
    start = (image_size - arr.shape[0]) // 2
    return PatternTrigger(start, start, arr)


def badclip_patch_size(image_size: int) -> int:
    """BadCLIP's 16x16 patch on 224 images; 1/8 of the side on small images (4x4 on 32x32), where a
    proportional 2x2 square would be too small to carry a pattern."""
    return 16 if image_size == 224 else max(3, round(image_size / 8))


def noise_patch_trigger(image_size: int, size: int | None = None, seed: int = 0) -> NoisePatchTrigger:
    return NoisePatchTrigger(size or badclip_patch_size(image_size), seed)


def ctrl_trigger(image_size: int, magnitude: float = 100.0, window: int = 32) -> FrequencyTrigger:
    return FrequencyTrigger(window=min(window, image_size), magnitude=magnitude)


TRIGGERS: dict[str, Callable[..., Trigger]] = {
    "badencoder": badencoder_trigger,
    "clip-patch": clip_patch_trigger,
    "badclip": badclip_trigger,
    "noise-patch": noise_patch_trigger,
    "ctrl": ctrl_trigger,
}


def make_trigger(name: str, image_size: int, params: dict[str, Any] | None = None) -> Trigger:
    """The trigger ``name`` for ``image_size`` images; ``params`` are the builder's keyword arguments."""
    if name not in TRIGGERS:
        raise ValueError(f"unknown trigger {name!r}; valid: {', '.join(TRIGGERS)}")
    try:
        return TRIGGERS[name](image_size, **(params or {}))
    except TypeError as exc:
        raise ValueError(f"bad parameters for trigger {name!r}: {exc}") from exc


def attack_record(encoder: str | Path) -> dict[str, Any] | None:
    """The last ``attack-*`` history entry of an encoder directory (or of the encoder.json beside an .onnx
    file): what attack made it, its target, trigger and trigger parameters, and its measured success."""
    path = Path(encoder)
    spec_file = path.with_name("encoder.json") if path.suffix == ".onnx" else path / "encoder.json"
    if not spec_file.exists():
        raise FileNotFoundError(f"{spec_file} does not exist: not an encoder written by dede")
    history = json.loads(spec_file.read_text()).get("history", [])
    return next((h for h in reversed(history) if str(h.get("stage", "")).startswith("attack-")), None)


def recorded_trigger(encoder: str | Path) -> tuple[str, dict[str, Any]]:
    """(trigger name, trigger params) of the attack recorded in an encoder's history."""
    rec = attack_record(encoder)
    if rec is None or not rec.get("trigger"):
        raise ValueError(f"{encoder} records no attack trigger (not an encoder written by `dede attack`)")
    return rec["trigger"], rec.get("trigger_params") or {}
