"""Request dependencies as ``Annotated`` aliases, and the upload reader shared by the scoring routes.

The dependencies are ``async def`` although they never wait: FastAPI runs a plain ``def`` dependency in a
worker thread, and that round trip was a tenth of the CPU of a ``/score`` request (py-spy)."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from starlette.datastructures import UploadFile

from service.batching import Batcher, DirectRunner
from service.errors import BadRequest, NotReady, Unauthorized
from service.explain import Explainer
from service.metrics import Metrics
from service.scoring import Scorer
from service.settings import Settings


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


async def get_scorer(request: Request) -> Scorer:
    scorer = getattr(request.app.state, "scorer", None)
    if scorer is None or not request.app.state.ready:
        raise NotReady("the model is not loaded yet")
    return scorer


Runner = Batcher | DirectRunner


def check_api_key(request: Request) -> None:
    key = request.app.state.settings.api_key
    if key is None:
        return
    given = request.headers.get("x-api-key", "")
    if not hmac.compare_digest(given.encode(), key.get_secret_value().encode()):
        raise Unauthorized("missing or wrong X-API-Key header")


@dataclass(frozen=True)
class Scoring:
    """What a scoring request needs, resolved once per request (one dependency instead of five: FastAPI's
    dependency resolution was a measurable share of the per-request CPU)."""

    settings: Settings
    scorer: Scorer
    runner: Runner
    metrics: Metrics
    explainer: Explainer


async def get_scoring(request: Request) -> Scoring:
    """The API key (when configured), then readiness."""
    check_api_key(request)
    state = request.app.state
    scoring: Scoring | None = getattr(state, "scoring", None)
    if scoring is None or not state.ready:
        raise NotReady("the model is not loaded yet")
    return scoring


MetricsDep = Annotated[Metrics, Depends(get_metrics)]
ScorerDep = Annotated[Scorer, Depends(get_scorer)]
ScoringDep = Annotated[Scoring, Depends(get_scoring)]


async def read_uploads(request: Request, max_files: int) -> list[tuple[str, bytes]]:
    """The uploaded images as (name, bytes): multipart fields ``file``/``files``, or the raw body."""
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        form = await request.form(max_files=max_files, max_fields=max_files)
        uploads = [v for k, v in form.multi_items() if k in ("file", "files") and isinstance(v, UploadFile)]
        if not uploads:
            raise BadRequest("multipart body has no file field named 'file' (or 'files')")
        return [(u.filename or f"file{i}", await u.read()) for i, u in enumerate(uploads)]
    if ctype.startswith("application/x-www-form-urlencoded"):
        raise BadRequest("send the image as multipart field 'file' or as the raw request body")
    return [("body", await request.body())]
