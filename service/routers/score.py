"""``POST /score`` and ``POST /score/batch``: decode, score through ONNX Runtime, flag, count."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from service.deps import Authorized, MetricsDep, Runner, RunnerDep, ScorerDep, SettingsDep, read_uploads
from service.errors import BadImage, BadRequest
from service.imaging import decode_image
from service.metrics import Metrics
from service.schemas import BatchResponse, ErrorResponse, ScoreResponse
from service.scoring import Scorer
from service.settings import Settings

router = APIRouter(tags=["scoring"], dependencies=[Authorized])

_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (400, 401, 413, 415, 503)}
_BODY = {"requestBody": {"content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary"}}}},
    "image/*": {"schema": {"type": "string", "format": "binary"}}}}}
_BATCH_BODY = {"requestBody": {"content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["files"], "properties": {
        "files": {"type": "array", "minItems": 1, "items": {"type": "string", "format": "binary"}}}}}}}}


def _decode_all(uploads: list[tuple[str, bytes]], size: int, max_pixels: int) -> np.ndarray:
    arrays = []
    for i, (name, data) in enumerate(uploads):
        try:
            arrays.append(decode_image(data, size, max_pixels))
        except BadImage as exc:
            if len(uploads) > 1:
                exc.message = f"image {i} ({name}): {exc.message}"
            raise
    return np.stack(arrays)


async def _score(request: Request, scorer: Scorer, runner: Runner, metrics: Metrics, settings: Settings,
                 max_files: int) -> list[ScoreResponse]:
    uploads = await read_uploads(request, max_files)
    if len(uploads) > max_files:
        raise BadRequest(f"{len(uploads)} images in one request; the limit is {max_files}")
    m = scorer.manifest
    metrics.queue_depth.inc(len(uploads))
    try:
        t0 = time.perf_counter()
        images = await run_in_threadpool(_decode_all, uploads, m.encoder.input_size, settings.max_image_pixels)
        decode_s = time.perf_counter() - t0
        result = await runner.submit(images)
    finally:
        metrics.queue_depth.dec(len(uploads))
    scores = [float(s) for s in result.scores]
    flags = [bool(f) for f in result.flags]
    metrics.observe_images(m.name, scores, flags, result.threshold, decode_s)
    return [ScoreResponse(backdoor=f, score=s, threshold=result.threshold, model=m.name, model_version=m.version)
            for s, f in zip(scores, flags, strict=True)]


@router.post("/score", response_model=ScoreResponse, responses=_ERRORS, openapi_extra=_BODY)
async def score(request: Request, scorer: ScorerDep, runner: RunnerDep, metrics: MetricsDep,
                settings: SettingsDep) -> ScoreResponse:
    """Score one image: multipart field ``file`` or the raw image as the body."""
    (result,) = await _score(request, scorer, runner, metrics, settings, max_files=1)
    return result


@router.post("/score/batch", response_model=BatchResponse, responses=_ERRORS, openapi_extra=_BATCH_BODY)
async def score_batch(request: Request, scorer: ScorerDep, runner: RunnerDep, metrics: MetricsDep,
                      settings: SettingsDep) -> BatchResponse:
    """Score several images (multipart fields ``files``); one result each, in upload order."""
    results = await _score(request, scorer, runner, metrics, settings, settings.max_batch_images)
    return BatchResponse(results=results)
