"""A drop-in guard for a downstream pipeline: every image is scored by DeDe before the classifier sees it.

    guard = Guard(DedeClient(url), classifier, on_alert="drop")   # or "flag" / "raise"
    out = guard(images)          # GuardedBatch(predictions, flags)

``classifier`` is any callable from a list of uint8 RGB arrays (H, W, 3) to a list of predictions (e.g. a
torchvision model behind its transform). The guard decodes each input the way the classifier's own loader would
(``exif``: apply the EXIF orientation or not; ``alpha``: transparency composited on ``black`` or ``white``, or
``drop``ped: PIL's ``convert("RGB")``; the defaults are torchvision's default loader's), sends those pixels
losslessly, and passes the classifier exactly the pixels that were scored: an EXIF tag or an alpha channel cannot
show the classifier an image the detector never saw. On alert: ``drop`` keeps flagged images away from the
classifier (their prediction is None), ``flag`` classifies everything and returns the flags beside the
predictions, ``raise`` raises ``BackdoorDetected`` before classifying anything. ``p_cutoff`` flags on the
p-value instead of the bundle's alert threshold: the guard's own operating point (for example a stricter 1e-4 to
act only on incidents, or a looser 0.01 to route doubtful inputs to review), FPR <= p_cutoff on clean traffic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageOps

from service.client import DedeClient, ImageLike, Verdict
from service.imaging import BACKGROUNDS, open_image, orientation, to_rgb

Policy = Literal["drop", "flag", "raise"]


class BackdoorDetected(RuntimeError):
    def __init__(self, indices: list[int], verdicts: list[Verdict]) -> None:
        super().__init__(f"DeDe flagged {len(indices)} input(s) as backdoor activations: indices {indices}")
        self.indices, self.verdicts = indices, verdicts


@dataclass
class GuardedBatch:
    predictions: list[Any]  # None where an input was dropped
    flags: list[bool]
    verdicts: list[Verdict]


def as_seen(image: ImageLike, exif: bool = False, alpha: str = "drop") -> np.ndarray:
    """Encoded bytes, a PIL image or an array -> uint8 (H, W, 3), as a loader with this convention shows it."""
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        return image
    if isinstance(image, bytes | bytearray):
        img = open_image(bytes(image))
    elif isinstance(image, np.ndarray):
        img = Image.fromarray(np.asarray(image, dtype=np.uint8))
    else:
        img = image
    img.load()
    if exif and orientation(img) != 1:
        img = ImageOps.exif_transpose(img)
    return np.asarray(to_rgb(img, BACKGROUNDS[alpha]), dtype=np.uint8)


class Guard:
    def __init__(self, client: DedeClient, classifier: Callable[[list[np.ndarray]], Sequence[Any]],
                 on_alert: Policy = "drop", exif: bool = False, alpha: str = "drop",
                 p_cutoff: float | None = None) -> None:
        if on_alert not in ("drop", "flag", "raise"):
            raise ValueError(f"on_alert must be 'drop', 'flag' or 'raise', not {on_alert!r}")
        if alpha not in BACKGROUNDS:
            raise ValueError(f"alpha must be one of {sorted(BACKGROUNDS)}, not {alpha!r}")
        self.client, self.classifier, self.on_alert = client, classifier, on_alert
        if p_cutoff is not None and not 0 < p_cutoff < 1:
            raise ValueError(f"p_cutoff must be in (0, 1), not {p_cutoff!r}")
        self.exif, self.alpha, self.p_cutoff = exif, alpha, p_cutoff

    def flagged(self, v: Verdict) -> bool:
        """The service's alert, or with ``p_cutoff``: p-value <= the cut-off (a degenerate image never is)."""
        if self.p_cutoff is None or v.p_value is None:
            return v.backdoor
        return v.reason != "degenerate" and v.p_value <= self.p_cutoff

    def __call__(self, inputs: Sequence[ImageLike]) -> GuardedBatch:
        images = [as_seen(x, self.exif, self.alpha) for x in inputs]  # the pixels scored and classified
        verdicts = self.client.score_batch(images)
        flags = [self.flagged(v) for v in verdicts]
        if self.on_alert == "raise" and any(flags):
            raise BackdoorDetected([i for i, f in enumerate(flags) if f], verdicts)
        keep = [i for i, f in enumerate(flags) if not (f and self.on_alert == "drop")]
        preds = list(self.classifier([images[i] for i in keep])) if keep else []
        out: list[Any] = [None] * len(images)
        for i, p in zip(keep, preds, strict=True):
            out[i] = p
        return GuardedBatch(out, flags, verdicts)
