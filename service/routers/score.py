"""``POST /score`` and ``POST /score/batch``: decode, score through ONNX Runtime, flag, count.

The responses are serialised here (pydantic's ``model_dump_json``) and returned as a ``Response``, which
FastAPI passes through without validating and re-encoding it a second time; ``response_model`` still
documents them in the OpenAPI schema."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from service.deps import ScoringDep, read_uploads
from service.errors import BadRequest
from service.pipeline import score_uploads
from service.schemas import BatchResponse, ErrorResponse, ScoreResponse

router = APIRouter(tags=["scoring"])

_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (400, 401, 413, 415, 503)}
_BODY = {"requestBody": {"content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary"}}}},
    "image/*": {"schema": {"type": "string", "format": "binary"}}}}}
_BATCH_BODY = {"requestBody": {"content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["files"], "properties": {
        "files": {"type": "array", "minItems": 1, "items": {"type": "string", "format": "binary"}}}}}}}}

Explain = Annotated[bool, Query(description="also return the reconstruction and a per-patch error map (PNG, "
                                            "base64); runs the models once more")]


async def _uploads(request: Request, limit: int) -> list[tuple[str, bytes]]:
    uploads = await read_uploads(request, limit)
    if len(uploads) > limit:
        raise BadRequest(f"{len(uploads)} images in one request; the limit is {limit}")
    return uploads


def _json(body: ScoreResponse | BatchResponse) -> Response:
    return Response(body.model_dump_json(exclude_none=True), media_type="application/json")


@router.post("/score", response_model=ScoreResponse, response_model_exclude_none=True, responses=_ERRORS,
             openapi_extra=_BODY)
async def score(request: Request, ctx: ScoringDep, explain: Explain = False) -> Response:
    """Score one image: multipart field ``file`` or the raw image as the body."""
    (result,) = await score_uploads(ctx, await _uploads(request, 1), explain)
    return _json(result)


@router.post("/score/batch", response_model=BatchResponse, response_model_exclude_none=True, responses=_ERRORS,
             openapi_extra=_BATCH_BODY)
async def score_batch(request: Request, ctx: ScoringDep, explain: Explain = False) -> Response:
    """Score several images (multipart fields ``files``); one result each, in upload order."""
    uploads = await _uploads(request, ctx.settings.max_batch_images)
    return _json(BatchResponse(results=await score_uploads(ctx, uploads, explain)))
