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
    """One entry per upload: the highest-scoring view's score, p-value, name and pixels (B, size, size, 3); the
    alert flag (p <= the alert FPR), the incident flag, and whether the upload is degenerate (never flagged)."""

    scores: list[float]
    flags: list[bool]
    views: list[str]
    pixels: np.ndarray
    threshold: float
    p_values: list[float | None]
    incidents: list[bool]
    degenerate: list[bool]


def is_degenerate(views: Views, max_std: float) -> bool:
    """Every view of the upload is flat (each colour channel's standard deviation at most ``max_std`` on 0-255,
    views (size, size, 3) uint8): an all-black,
    all-white, single-colour or fully transparent image. Its reconstruction error says nothing about a backdoor
    (a flat image is far from the natural images the decoder learnt), so it is answered ``degenerate``."""
    return all(float(v.reshape(-1, 3).std(axis=0).max()) <= max_std for _, v in views)


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
    flats = [is_degenerate(upload, ctx.settings.degenerate_std) for upload in views]
    p = ctx.scorer.p_values(np.asarray(scores, dtype=np.float32))
    incident_at = ctx.scorer.incident_threshold
    return Verdicts(scores, [s > result.threshold and not d for s, d in zip(scores, flats, strict=True)], names,
                    flat[best], result.threshold, [None] * len(scores) if p is None else p.tolist(),
                    [incident_at is not None and s > incident_at and not d for s, d in zip(scores, flats, strict=True)],
                    flats)


def observe(ctx: Scoring, v: Verdicts, decode_s: float) -> None:
    """Counts, alerts, incidents, score ratios, p-values and decode time of an answered request; degenerate uploads
    are counted apart, not as scored images."""
    kept = [i for i, d in enumerate(v.degenerate) if not d]
    p_values = [p for i in kept if (p := v.p_values[i]) is not None]
    ctx.metrics.observe_images(ctx.scorer.manifest.name, [v.scores[i] for i in kept], [v.flags[i] for i in kept],
                               v.threshold, decode_s, p_values, sum(v.incidents), len(v.degenerate) - len(kept))


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
    return [ScoreResponse(backdoor=v.flags[i], score=v.scores[i], p_value=v.p_values[i], incident=v.incidents[i],
                          reason="degenerate" if v.degenerate[i] else None, threshold=v.threshold, view=v.views[i],
                          model=m.name, model_version=m.version, explanation=explanations[i])
            for i in range(len(uploads))]
