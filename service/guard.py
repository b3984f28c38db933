"""A drop-in guard for a downstream pipeline: every image is scored by DeDe before the classifier sees it.

    guard = Guard(DedeClient(url), classifier, on_alert="drop")   # or "flag" / "raise"
    out = guard(images)          # GuardedBatch(predictions, flags)

``classifier`` is any callable from a list of images to a list of predictions (e.g. a torchvision model
behind its transform). On alert: ``drop`` keeps flagged images away from the classifier (their prediction
is None), ``flag`` classifies everything and returns the flags beside the predictions, ``raise`` raises
``BackdoorDetected`` before classifying anything.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from service.client import DedeClient, ImageLike, Verdict

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


class Guard:
    def __init__(self, client: DedeClient, classifier: Callable[[list[ImageLike]], Sequence[Any]],
                 on_alert: Policy = "drop") -> None:
        if on_alert not in ("drop", "flag", "raise"):
            raise ValueError(f"on_alert must be 'drop', 'flag' or 'raise', not {on_alert!r}")
        self.client, self.classifier, self.on_alert = client, classifier, on_alert

    def __call__(self, images: Sequence[ImageLike]) -> GuardedBatch:
        verdicts = self.client.score_batch(list(images))
        flags = [v.backdoor for v in verdicts]
        if self.on_alert == "raise" and any(flags):
            raise BackdoorDetected([i for i, f in enumerate(flags) if f], verdicts)
        keep = [i for i, f in enumerate(flags) if not (f and self.on_alert == "drop")]
        preds = list(self.classifier([images[i] for i in keep])) if keep else []
        out: list[Any] = [None] * len(images)
        for i, p in zip(keep, preds, strict=True):
            out[i] = p
        return GuardedBatch(out, flags, verdicts)
