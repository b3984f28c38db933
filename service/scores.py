"""Per-image scores from the detector's per-patch squared error map ``patch_error: (B, N)``.

- ``paper``: the sum over every masked patch (the paper's score).
- ``trimmed@k``: the sum without the k largest patch errors. A trigger's pixels are local (a few patches
  are badly rebuilt), a hijacked embedding changes the whole reconstruction; dropping the worst patches
  keeps the second signal and discards most of the first.
- ``spread``: the share of the total error held by the 10% worst patches (local = high, global = low);
  reported in evaluations, not a deployable score on its own.

One implementation, used by the service, calibration and evaluation alike.
"""

from __future__ import annotations

import re

import numpy as np

_TRIMMED = re.compile(r"^trimmed@(\d+)$")
SCORE_PATTERN = r"^(paper|trimmed@\d+)$"


def check_score(kind: str) -> str:
    if kind == "paper" or _TRIMMED.match(kind):
        return kind
    raise ValueError(f"unknown score {kind!r}; use 'paper' or 'trimmed@<k>'")


def compute_score(patch_error: np.ndarray, kind: str = "paper") -> np.ndarray:
    """patch_error: (B, N) -> (B,) float32."""
    if kind == "paper":
        return patch_error.sum(1).astype(np.float32)
    m = _TRIMMED.match(kind)
    if m:
        k = int(m.group(1))
        if k >= patch_error.shape[1]:
            raise ValueError(f"{kind}: cannot drop {k} of {patch_error.shape[1]} patches")
        kept = np.sort(patch_error, axis=1)[:, : patch_error.shape[1] - k]
        return kept.sum(1).astype(np.float32)
    raise ValueError(f"unknown score {kind!r}; use 'paper' or 'trimmed@<k>'")


def error_spread(patch_error: np.ndarray, top: float = 0.1) -> np.ndarray:
    """Share of each image's error in its ``top`` fraction of worst patches -> (B,) in [0, 1]."""
    k = max(1, int(round(top * patch_error.shape[1])))
    worst = -np.sort(-patch_error, axis=1)[:, :k].sum(1)
    return (worst / np.maximum(patch_error.sum(1), 1e-12)).astype(np.float32)
