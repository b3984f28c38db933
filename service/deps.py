"""Request dependencies as ``Annotated`` aliases, the readiness check, and the upload reader shared by the
scoring routes.

The dependencies are ``async def`` although they never wait: FastAPI runs a plain ``def`` dependency in a
worker thread, and that round trip was a tenth of the CPU of a ``/score`` request (py-spy)."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from starlette.datastructures import UploadFile

from service.batching import Runner
from service.decoding import Decoder
from service.errors import BadRequest, NotReady, Unauthorized
from service.explain import Explainer
from service.metrics import Metrics
from service.scoring import Scorer
from service.settings import Settings


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


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
    decoder: Decoder


NOT_LOADED = "the model is not loaded yet"


def loaded(request: Request) -> Scoring | None:
    """What scoring needs once the app is ready: the bundle loaded and warmed up, the runner started; None during
    start-up and from the start of shutdown. The one readiness check of every endpoint."""
    state = request.app.state
    scoring: Scoring | None = getattr(state, "scoring", None)
    return scoring if scoring is not None and state.ready else None


def require_loaded(request: Request, message: str = NOT_LOADED) -> Scoring:
    """``loaded``, or ``NotReady`` (503 + Retry-After) with ``message``."""
    scoring = loaded(request)
    if scoring is None:
        raise NotReady(message)
    return scoring


async def get_scorer(request: Request) -> Scorer:
    return require_loaded(request).scorer


async def get_scoring(request: Request) -> Scoring:
    """The API key (when configured), then readiness."""
    check_api_key(request)
    return require_loaded(request)


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
