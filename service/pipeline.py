"""The scoring path shared by ``POST /score``, ``POST /score/batch`` and the V2 ``infer`` endpoint:
decode (``service.decoding``: its own threads and memory budget) -> every view of each image through the batcher
-> each upload's verdict from its views -> optional explanation -> metrics.

An upload is flagged when any of its views is (``imaging.load_views``: the EXIF orientation applied or not,
transparency flattened on black or white or dropped, as ``DEDE_EXIF`` and ``DEDE_ALPHA`` say), and its score and
``view`` are those of its highest-scoring view. Metrics count an upload once, after its answer is ready: an
explanation refused with 503 and retried does not count the image twice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from service.decoding import Views
from service.deps import Scoring
from service.imaging import Image, resize_rgb
from service.schemas import Explanation, ScoreResponse


@dataclass(frozen=True)
class Verdicts:
    """One entry per upload: the highest-scoring view's score, name and pixels (B, size, size, 3)."""

    scores: list[float]
    flags: list[bool]
    views: list[str]
    pixels: np.ndarray
    threshold: float


async def decode_uploads(ctx: Scoring, uploads: list[tuple[str, bytes]]) -> list[Views]:
    """Encoded files -> each one's views; a ``BadImage`` names the file when there are several."""
    return await ctx.decoder.decode(uploads)


def pixel_views(pixels: np.ndarray) -> list[Views]:
    """Pixels sent as pixels (V2 ``image``) have one view: as sent."""
    return [[("stored", p)] for p in pixels]


def resize_pixels(pixels: np.ndarray, size: int) -> np.ndarray:
    """uint8 (B, H, W, 3) of any H, W -> (B, size, size, 3), resized as uploads are."""
    if pixels.shape[1:3] == (size, size):
        return pixels
    return np.stack([resize_rgb(Image.fromarray(p, "RGB"), size) for p in pixels])


async def score_views(ctx: Scoring, views: list[Views]) -> Verdicts:
    """Every view through the runner (batcher, bounded queue, timeout) in one submission; each upload's verdict."""
    flat = np.stack([v for upload in views for _, v in upload])
    ctx.metrics.queue_depth.inc(len(flat))
    try:
        result = await ctx.runner.submit(flat)
    finally:
        ctx.metrics.queue_depth.dec(len(flat))
    scores, names, best, start = [], [], [], 0
    for upload in views:
        k = start + int(np.argmax(result.scores[start:start + len(upload)]))
        scores.append(float(result.scores[k]))
        names.append(upload[k - start][0])
        best.append(k)
        start += len(upload)
    return Verdicts(scores, [s > result.threshold for s in scores], names, flat[best], result.threshold)


def observe(ctx: Scoring, verdicts: Verdicts, decode_s: float) -> None:
    """Counts, alerts, score ratios and decode time of an answered request."""
    ctx.metrics.observe_images(ctx.scorer.manifest.name, verdicts.scores, verdicts.flags, verdicts.threshold,
                               decode_s)


async def score_uploads(ctx: Scoring, uploads: list[tuple[str, bytes]],
                        explain: bool) -> list[ScoreResponse]:
    """The /score path: decode, score, and (``explain``) an explanation of each upload's reported view."""
    t0 = time.perf_counter()
    views = await decode_uploads(ctx, uploads)
    decode_s = time.perf_counter() - t0
    v = await score_views(ctx, views)
    explanations: list[Explanation | None] = (
        list(await ctx.explainer.explain(v.pixels)) if explain else [None] * len(uploads))
    observe(ctx, v, decode_s)
    m = ctx.scorer.manifest
    return [ScoreResponse(backdoor=f, score=s, threshold=v.threshold, view=name, model=m.name,
                          model_version=m.version, explanation=e)
            for s, f, name, e in zip(v.scores, v.flags, v.views, explanations, strict=True)]
