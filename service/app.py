"""App factory: ``dede serve``, or ``uvicorn service.app:create_app --factory --http
service.protocol:GuardedHttpProtocol`` (without ``--http`` the connection limits of ``service.protocol`` are off).

The bundle is loaded and warmed up once at start-up; a bundle that fails validation stops the start with
a ``BundleError`` naming the problem. No endpoint loads, fetches or replaces a model."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from service.batching import Batcher, DirectRunner, Runner
from service.calibration import rule_q
from service.decoding import ByteBudget, Decoder
from service.deps import Scoring
from service.errors import BundleError, DedeError
from service.explain import Explainer
from service.imaging import Image, set_text_limit
from service.limits import BodySizeLimit
from service.manifest import Manifest
from service.metrics import Metrics, ObservedScorer, worker_stopped
from service.routers import health, metrics, score, v2
from service.scoring import Scorer, ScoreResult
from service.settings import Settings, get_settings

log = logging.getLogger("dede.service")


def load_scorer(settings: Settings) -> Scorer:
    scorer = Scorer.from_bundle(settings.bundle, settings.provider_list, settings.intra_op_threads,
                                settings.mask_draws, manifest_sha256=settings.bundle_sha256)
    if scorer.on_gpu and settings.gpu_fixed_batch:
        scorer.fixed_batch = settings.max_batch_size
    if settings.require_gpu and not scorer.on_gpu:
        raise BundleError(f"DEDE_REQUIRE_GPU is set but ONNX Runtime runs on {scorer.provider} "
                          "(CUDA libraries missing or onnxruntime-gpu not installed)")
    scorer.warm_up()
    return scorer


def _levels(m: Manifest) -> tuple[float | None, float | None, int]:
    """The alert and incident FPRs (None where the rule is not ``fpr@q``) and the calibration count, for metrics."""
    incident = m.threshold.incident
    count = m.calibration.count if m.calibration else 0
    return rule_q(m.threshold.rule), rule_q(incident.rule if incident else None), count


def make_runner(settings: Settings, fn: Callable[[np.ndarray], ScoreResult]) -> Runner:
    """The ``Batcher`` (``DEDE_BATCHING``, the default) or the ``DirectRunner`` that scores with ``fn``."""
    if settings.batching:
        return Batcher(fn, settings.max_batch_size, settings.max_wait_ms, settings.max_queue,
                       settings.request_timeout_s, settings.model_concurrency)
    return DirectRunner(fn, settings.max_queue, settings.request_timeout_s)


def _log_to_stderr() -> None:
    """The service's own INFO lines (bundle, provider, warm-up) beside uvicorn's, unless logging is configured."""
    logger = logging.getLogger("dede")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        logger.addHandler(handler)


def _error_response(request: Request, status: int, code: str, message: str,
                    headers: dict[str, str] | None = None) -> JSONResponse:
    """``{"error": {"code", "message"}}``; under ``/v2`` the Open Inference Protocol's ``{"error": message}``."""
    path = request.url.path
    body = {"error": message} if path == "/v2" or path.startswith("/v2/") else {
        "error": {"code": code, "message": message}}
    if status == 503:
        headers = (headers or {}) | {"Retry-After": "1"}
    return JSONResponse(body, status, headers=headers)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    _log_to_stderr()
    Image.MAX_IMAGE_PIXELS = settings.max_image_pixels
    set_text_limit(settings.max_text_bytes)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scorer = load_scorer(settings)
        m = scorer.manifest
        metrics: Metrics = app.state.metrics
        metrics.model_loaded(m.name, m.version, scorer.provider, *_levels(m))
        runner = make_runner(settings, ObservedScorer(scorer, metrics))
        runner.start()
        app.state.runner, app.state.scorer = runner, scorer
        explainer = Explainer(scorer, timeout_s=settings.request_timeout_s)
        decoder = Decoder(settings, scorer.size)
        app.state.scoring = Scoring(settings, scorer, runner, metrics, explainer, decoder)
        app.state.ready = True
        log.info("loaded bundle %s v%s on %s, warmed up at batch sizes %s", m.name, m.version, scorer.provider,
                 scorer.warmed_up)
        yield
        app.state.ready = False  # /readyz fails first, so a load balancer stops sending
        await runner.stop()  # in-flight requests finish
        decoder.close()
        worker_stopped()

    app = FastAPI(title="DeDe backdoor alarm", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.state.ready = False
    app.state.scorer = None
    app.state.runner = None
    app.state.scoring = None

    @app.exception_handler(DedeError)
    async def dede_error(request: Request, exc: DedeError) -> JSONResponse:
        request.app.state.metrics.errors.labels(exc.code).inc()
        return _error_response(request, exc.status_code, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        request.app.state.metrics.errors.labels("bad_request").inc()
        return _error_response(request, 400, "bad_request", str(exc.errors()))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        if exc.status_code >= 400 and exc.status_code not in (404, 405):
            request.app.state.metrics.errors.labels(code).inc()
        return _error_response(request, exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(ClientDisconnect)
    async def client_disconnect(request: Request, exc: ClientDisconnect) -> JSONResponse:
        # the client went away (or timed out: service.protocol) before its body was in; the answer goes nowhere
        request.app.state.metrics.errors.labels("client_disconnect").inc()
        client = f"{request.client.host}:{request.client.port} - " if request.client else ""
        log.warning("%sclient disconnected before the request body was complete: %s %s", client, request.method,
                    request.url.path)
        return _error_response(request, 400, "client_disconnect", "the client disconnected during the request")

    # the scoring routes first: FastAPI matches included routers in order, with a per-router cost
    app.include_router(score.router)
    app.include_router(v2.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    uploads = ByteBudget(settings.upload_budget_bytes, "the upload budget (DEDE_UPLOAD_BUDGET_BYTES)")
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes, budget=uploads,
                       timeout_s=settings.request_timeout_s)
    return app
