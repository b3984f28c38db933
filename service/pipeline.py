"""The scoring path shared by ``POST /score``, ``POST /score/batch`` and the V2 ``infer`` endpoint:
decode -> queue for the model (batcher) -> flag -> metrics -> optional explanation.

Small images are decoded on the event loop: for a CIFAR-sized PNG, handing the work to a thread and back
cost more CPU than the decoding itself (measured with py-spy under ``make bench`` load). The header is read
first, so the decision rests on the pixel count, never on the upload's size: a small file that declares
many pixels (a decompression bomb) is still decoded in a worker thread, after the pixel-limit check.
"""

from __future__ import annotations

import time

import numpy as np
from starlette.concurrency import run_in_threadpool

from service.deps import Scoring
from service.errors import BadImage
from service.imaging import Image, load_rgb, open_image, resize_rgb
from service.schemas import Explanation, ScoreResponse
from service.scoring import ScoreResult

INLINE_DECODE_PIXELS = 128 * 128  # images at most this large are decoded on the event loop


def _named(exc: BadImage, i: int, name: str, many: bool) -> BadImage:
    if many:
        exc.message = f"image {i} ({name}): {exc.message}"
    return exc


def _decode_images(images: list[tuple[int, str, Image.Image]], size: int, many: bool) -> list[np.ndarray]:
    out = []
    for i, name, img in images:
        try:
            out.append(load_rgb(img, size))
        except BadImage as exc:
            raise _named(exc, i, name, many) from None
    return out


async def decode_uploads(ctx: Scoring, uploads: list[tuple[str, bytes]]) -> np.ndarray:
    """Encoded files -> uint8 (B, size, size, 3); a ``BadImage`` names the file when there are several."""
    size, many = ctx.scorer.size, len(uploads) > 1
    opened: list[tuple[int, str, Image.Image]] = []
    try:
        for i, (name, data) in enumerate(uploads):
            try:
                opened.append((i, name, open_image(data, ctx.settings.max_image_pixels)))
            except BadImage as exc:
                raise _named(exc, i, name, many) from None
        small = [o for o in opened if o[2].width * o[2].height <= INLINE_DECODE_PIXELS]
        large = [o for o in opened if o[2].width * o[2].height > INLINE_DECODE_PIXELS]
        arrays = dict(zip([o[0] for o in small], _decode_images(small, size, many), strict=True))
        if large:
            decoded = await run_in_threadpool(_decode_images, large, size, many)
            arrays.update(zip([o[0] for o in large], decoded, strict=True))
    finally:
        for _, _, img in opened:
            img.close()
    return np.stack([arrays[i] for i in range(len(uploads))])


def resize_pixels(pixels: np.ndarray, size: int) -> np.ndarray:
    """uint8 (B, H, W, 3) of any H, W -> (B, size, size, 3), resized as uploads are."""
    if pixels.shape[1:3] == (size, size):
        return pixels
    return np.stack([resize_rgb(Image.fromarray(p, "RGB"), size) for p in pixels])


async def score_images(ctx: Scoring, images: np.ndarray, decode_s: float) -> ScoreResult:
    """Decoded images through the runner (batcher, bounded queue, timeout); counts and histograms."""
    m, metrics = ctx.scorer.manifest, ctx.metrics
    metrics.queue_depth.inc(len(images))
    try:
        result = await ctx.runner.submit(images)
    finally:
        metrics.queue_depth.dec(len(images))
    metrics.observe_images(m.name, result.scores.tolist(), result.flags.tolist(), result.threshold, decode_s)
    return result


async def score_uploads(ctx: Scoring, uploads: list[tuple[str, bytes]],
                        explain: bool) -> list[ScoreResponse]:
    """The /score path: decode, score, and (``explain``) an explanation per image."""
    t0 = time.perf_counter()
    images = await decode_uploads(ctx, uploads)
    result = await score_images(ctx, images, time.perf_counter() - t0)
    explanations: list[Explanation | None] = (
        list(await ctx.explainer.explain(images)) if explain else [None] * len(images))
    m = ctx.scorer.manifest
    return [ScoreResponse(backdoor=f, score=s, threshold=result.threshold, model=m.name, model_version=m.version,
                          explanation=e)
            for s, f, e in zip(result.scores.tolist(), result.flags.tolist(), explanations, strict=True)]
