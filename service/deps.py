"""Request dependencies as ``Annotated`` aliases, and the upload reader shared by the scoring routes."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from starlette.datastructures import UploadFile

from service.batching import Batcher, DirectRunner
from service.errors import BadRequest, NotReady, Unauthorized
from service.metrics import Metrics
from service.scoring import Scorer
from service.settings import Settings


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def get_scorer(request: Request) -> Scorer:
    scorer = getattr(request.app.state, "scorer", None)
    if scorer is None or not request.app.state.ready:
        raise NotReady("the model is not loaded yet")
    return scorer


Runner = Batcher | DirectRunner


def get_runner(request: Request) -> Runner:
    runner = getattr(request.app.state, "runner", None)
    if runner is None or not request.app.state.ready:
        raise NotReady("the model is not loaded yet")
    return runner


def check_api_key(request: Request) -> None:
    key = request.app.state.settings.api_key
    if key is None:
        return
    given = request.headers.get("x-api-key", "")
    if not hmac.compare_digest(given.encode(), key.get_secret_value().encode()):
        raise Unauthorized("missing or wrong X-API-Key header")


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
ScorerDep = Annotated[Scorer, Depends(get_scorer)]
RunnerDep = Annotated[Runner, Depends(get_runner)]
Authorized = Depends(check_api_key)


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
