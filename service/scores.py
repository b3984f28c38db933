"""Per-image scores from the detector's per-patch squared error map ``patch_error: (B, N)``.

- ``paper``: the sum over every masked patch (the paper's score).
- ``trimmed@k``: the sum without the k largest patch errors. A trigger's pixels are local (a few patches
  are badly rebuilt), a hijacked embedding changes the whole reconstruction; dropping the worst patches
  keeps the second signal and discards most of the first.
- ``content@a``: the paper score over the image's content to the power a, ``paper / content(x) ** a``, where
  ``content(x)`` (``image_content``) is the squared error of drawing each channel's mean colour: what a decoder
  that knew nothing of the image but its average colour would get wrong. A busy image is hard to redraw from any
  embedding and a flat one easy, so the paper score ranks images by how much there is to draw as much as by
  whether the embedding describes them. ``a`` is fitted when the threshold is calibrated (``content`` in a
  training config: ``fit_content_exponent``, the slope of log paper score on log content over the auxiliary
  images), so the score no longer follows the content on clean images; the fitted value is part of the name the
  manifest records (``content@0.617``).

One implementation, used by the service, calibration and evaluation alike (the evaluations' own ``spread``, which
no bundle deploys, is ``training.evaluation.bundle_scores.error_spread``).
"""

from __future__ import annotations

import re

import numpy as np

_TRIMMED = re.compile(r"^trimmed@(\d+)$")
_CONTENT = re.compile(r"^content@(\d+(?:\.\d+)?)$")
SCORE_PATTERN = r"^(paper|trimmed@\d+|content@\d+(\.\d+)?)$"
CONTENT_FIT = "content"  # a training setting: a content@a score, a fitted at calibration
_UNKNOWN = "use 'paper', 'trimmed@<k>' or 'content@<a>' ('content' in a training config: a fitted)"


def check_score(kind: str, fit: bool = False) -> str:
    """``kind`` if it names a score (with ``fit``, also ``content``: the exponent is fitted at calibration)."""
    if kind == "paper" or _TRIMMED.match(kind) or _CONTENT.match(kind) or (fit and kind == CONTENT_FIT):
        return kind
    raise ValueError(f"unknown score {kind!r}; {_UNKNOWN}")


def content_exponent(kind: str) -> float | None:
    """The exponent of a ``content@a`` score; None for a score that needs the patch errors only."""
    m = _CONTENT.match(kind)
    return float(m.group(1)) if m else None


def image_content(x: np.ndarray) -> np.ndarray:
    """x: (B, C, H, W) the detector's normalised input -> (B,) float64: the squared error summed over every pixel of
    each image against its own mean colour per channel (the paper score of a reconstruction that is that colour)."""
    x = np.asarray(x, np.float64)
    return ((x - x.mean((2, 3), keepdims=True)) ** 2).sum((1, 2, 3))


def fit_content_exponent(paper: np.ndarray, content: np.ndarray) -> tuple[float, float]:
    """Least-squares slope of log(paper score) on log(content) over clean images, and their correlation ->
    (exponent rounded to 3 decimals, r). Images with zero content or score (flat images) are left out."""
    ok = (paper > 0) & (content > 0)
    if ok.sum() < 2:
        raise ValueError("fitting the content exponent needs at least 2 images with some content and error")
    lx, ly = np.log(content[ok]), np.log(paper[ok])
    slope = float(np.polyfit(lx, ly, 1)[0])
    return round(max(slope, 0.0), 3), float(np.corrcoef(lx, ly)[0, 1])


def compute_score(patch_error: np.ndarray, kind: str = "paper", x: np.ndarray | None = None) -> np.ndarray:
    """patch_error: (..., B, N) (a leading axis: one per mask draw), x: (B, C, H, W) the normalised images
    (``content@a`` only; their content is computed once for every draw) -> (..., B) float32."""
    if kind == "paper":
        return patch_error.sum(-1).astype(np.float32)
    m = _TRIMMED.match(kind)
    if m:
        k = int(m.group(1))
        if k >= patch_error.shape[-1]:
            raise ValueError(f"{kind}: cannot drop {k} of {patch_error.shape[-1]} patches")
        kept = np.sort(patch_error, axis=-1)[..., : patch_error.shape[-1] - k]
        return kept.sum(-1).astype(np.float32)
    exponent = content_exponent(kind)
    if exponent is not None:
        if patch_error.ndim < 2:
            raise ValueError(f"{kind} needs patch errors (..., B, N), got shape {patch_error.shape}")
        if x is None or len(x) != patch_error.shape[-2]:
            raise ValueError(f"{kind} needs the {patch_error.shape[-2]} images the patch errors are of")
        return content_score(patch_error.sum(-1), image_content(x), exponent)
    raise ValueError(f"unknown score {kind!r}; {_UNKNOWN}")


def content_score(paper: np.ndarray, content: np.ndarray, exponent: float) -> np.ndarray:
    """``content@<exponent>`` from paper scores (..., B) and ``image_content`` (B,) -> (..., B) float32. An image of
    one flat colour has no content: its score is divided by 1, the content of one pixel one normalised unit off its
    mean."""
    return (paper / np.maximum(content, 1.0) ** exponent).astype(np.float32)

