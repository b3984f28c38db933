"""Conformal p-values and the thresholds they imply, from a bundle's held-out clean calibration scores.

An image's p-value is the share of the n held-out clean images that score at least as high, counting the image
itself: ``p = (1 + #{calibration >= score}) / (1 + n)``. When clean traffic and the held-out images are
exchangeable (drawn alike), ``P(p <= q) <= q`` for every q: flagging at ``p <= q`` has a false-positive rate of at
most q. The smallest p-value is ``1 / (n + 1)``, so a rule ``fpr@q`` needs ``n >= 1 / q`` held-out images
(``images_needed``): 1,000 for q = 0.001, 10,000 for q = 1e-4.

``threshold_at(calibration, q)`` is the score above which ``p <= q``: flagging ``score > threshold`` and flagging
``p_value <= q`` are the same decision. Shapes: calibration (n,) float32, ascending; scores (B,)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

CALIBRATION_FILE = "calibration.f32"  # float32, little-endian, ascending: nothing but numbers (no pickle)


def rule_q(rule: str | None) -> float | None:
    """The q of a threshold rule ``fpr@q``; None for any other rule (``paper-1.5x``) or none."""
    return float(rule.removeprefix("fpr@")) if rule and rule.startswith("fpr@") else None


def images_needed(q: float) -> int:
    """Held-out images a rule ``fpr@q`` needs: the smallest reachable p-value, 1 / (n + 1), must not exceed q."""
    return math.ceil(1 / q - 1e-9)


def strictest_q(n: int) -> float:
    """The smallest q with ``n >= images_needed(q)``."""
    return 1.0 / n


def p_values(scores: np.ndarray, calibration: np.ndarray) -> np.ndarray:
    """(B,) scores -> (B,) float64 conformal p-values against the ascending (n,) calibration scores."""
    n = len(calibration)
    at_least = n - np.searchsorted(calibration, np.asarray(scores, dtype=np.float32), side="left")
    return (1.0 + at_least) / (1.0 + n)


def threshold_at(calibration: np.ndarray, q: float) -> float:
    """The score t with ``score > t`` exactly when ``p_value(score) <= q``: the (m + 1)-th largest calibration
    score, m = floor(q (n + 1)) - 1 (at most m held-out scores may be at or above a flagged score)."""
    n = len(calibration)
    if n < images_needed(q):
        raise ValueError(f"fpr@{q:g} needs at least {images_needed(q)} held-out calibration images (the smallest "
                         f"p-value is 1/(n+1)); this calibration split has {n}: use fpr@{strictest_q(n):.2g} or "
                         "more held-out images (--set holdout_images=N)")
    m = math.floor(q * (n + 1) + 1e-9) - 1
    return float(calibration[n - 1 - m])


def write_calibration(scores: np.ndarray, path: Path) -> np.ndarray:
    """Held-out scores -> ``path`` (sorted float32 little-endian); returns what was written."""
    out = np.sort(np.asarray(scores, dtype="<f4"))
    if not np.isfinite(out).all() or len(out) == 0:
        raise ValueError("calibration scores must be finite and not empty")
    out.tofile(path)
    return out


def read_calibration(path: Path, count: int) -> np.ndarray:
    """``path`` -> (count,) float32, checked: the recorded count, finite, ascending."""
    scores = np.fromfile(path, dtype="<f4")
    if len(scores) != count:
        raise ValueError(f"{path.name} holds {len(scores)} scores, the manifest says {count}")
    if not np.isfinite(scores).all() or (len(scores) > 1 and (np.diff(scores) < 0).any()):
        raise ValueError(f"{path.name} must hold finite scores in ascending order")
    return scores.astype(np.float32)
