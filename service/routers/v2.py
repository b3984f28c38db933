"""The Open Inference Protocol (KServe V2) REST endpoints, beside the service's own API.

Health, server and model metadata, model readiness, and ``infer`` (also under ``/versions/<version>``).
One model is served: the loaded bundle, under its manifest name and version. ``infer`` takes exactly one
input, either

- ``image``: UINT8 ``[N, H, W, 3]`` pixels (any H, W; resized like uploads to the model's input), or
- ``image_bytes``: BYTES ``[N]`` encoded image files (PNG, JPEG, ...). In JSON each element is a string:
  the specification leaves the encoding of binary BYTES elements in JSON open, so here it is the file's
  base64 (RFC 4648, standard alphabet).

Either input can instead travel as binary data after the JSON (the binary tensor data extension of
Triton/KServe: header ``Inference-Header-Content-Length``, input parameter ``binary_data_size``; BYTES
elements each preceded by a 4-byte little-endian length). Outputs are always JSON: ``score`` FP32 [N],
``backdoor`` BOOL [N], ``threshold`` FP32 [1], ``view`` BYTES [N] (the view each score belongs to: see
``service.pipeline``), ``incident`` BOOL [N] and, for a bundle with calibration scores, ``p_value`` FP64 [N];
with the request parameter ``explain`` true (or when one of them is requested by name) also ``reconstruction``
and ``error_map`` (BYTES [N], base64 PNG) and ``patch_errors`` (FP32 [N, patches]). Errors are
``{"error": <message>}``: 400 for a wrong datatype, shape or data, 404 for another model name or version, and
the limits, API key and overload answers of ``/score`` (413, 401, 422, 503 + Retry-After), since infer goes
through the same decoding and the same batcher.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
import time
from collections.abc import Iterator
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from service.deps import ScoringDep, loaded, require_loaded
from service.errors import BadRequest, ImageTooLarge, ModelNotFound
from service.pipeline import decode_uploads, observe, pixel_views, resize_pixels, score_views
from service.schemas_v2 import (
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    ModelReady,
    RequestInput,
    ResponseOutput,
    ServerLive,
    ServerMetadata,
    ServerReady,
    TensorMetadata,
    V2Error,
    inline_schema,
)
from service.scoring import Scorer
from service.settings import Settings

router = APIRouter(prefix="/v2", tags=["open inference protocol (v2)"])

PIXELS, FILES = "image", "image_bytes"
SCORE_OUTPUTS = ("score", "backdoor", "threshold", "view", "p_value", "incident")
EXPLAIN_OUTPUTS = ("reconstruction", "error_map", "patch_errors")
HEADER_LENGTH = "inference-header-content-length"
INLINE_BODY_BYTES = 256 * 1024  # larger bodies are parsed in a worker thread

_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": V2Error} for code in (400, 401, 404, 413, 415, 503)}
_INFER_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": inline_schema(InferenceRequest)}}}}


def _model(request: Request, name: str, version: str | None) -> Scorer:
    """The loaded bundle when ``name`` (and ``version``, if given) are its own; 404 otherwise."""
    scorer = require_loaded(request).scorer
    m = scorer.manifest
    if name != m.name:
        raise ModelNotFound(f"unknown model {name!r}; this server serves {m.name!r}")
    if version is not None and version != m.version:
        raise ModelNotFound(f"model {name!r} has no version {version!r}; it has {m.version!r}")
    return scorer


async def get_model(request: Request, name: str) -> Scorer:
    return _model(request, name, None)


async def get_model_version(request: Request, name: str, version: str) -> Scorer:
    return _model(request, name, version)


ModelDep = Annotated[Scorer, Depends(get_model)]
VersionDep = Annotated[Scorer, Depends(get_model_version)]


@router.get("/health/live", response_model=ServerLive)
async def live() -> ServerLive:
    return ServerLive(live=True)


@router.get("/health/ready", response_model=ServerReady, responses={503: {"model": ServerReady}})
async def ready(request: Request) -> Response:
    ok = loaded(request) is not None
    return JSONResponse(ServerReady(ready=ok).model_dump(), 200 if ok else 503)


@router.get("", response_model=ServerMetadata)
async def server_metadata(request: Request) -> ServerMetadata:
    return ServerMetadata(name="dede", version=request.app.version, extensions=["binary_tensor_data"])


def _metadata(scorer: Scorer) -> ModelMetadata:
    m, n = scorer.manifest, scorer.manifest.detector.num_patches
    return ModelMetadata(
        name=m.name, versions=[m.version], platform="onnxruntime_onnx",
        inputs=[TensorMetadata(name=PIXELS, datatype="UINT8", shape=[-1, -1, -1, 3]),
                TensorMetadata(name=FILES, datatype="BYTES", shape=[-1])],
        outputs=[TensorMetadata(name="score", datatype="FP32", shape=[-1]),
                 TensorMetadata(name="backdoor", datatype="BOOL", shape=[-1]),
                 TensorMetadata(name="threshold", datatype="FP32", shape=[1]),
                 TensorMetadata(name="view", datatype="BYTES", shape=[-1]),
                 TensorMetadata(name="p_value", datatype="FP64", shape=[-1]),
                 TensorMetadata(name="incident", datatype="BOOL", shape=[-1]),
                 TensorMetadata(name="reconstruction", datatype="BYTES", shape=[-1]),
                 TensorMetadata(name="error_map", datatype="BYTES", shape=[-1]),
                 TensorMetadata(name="patch_errors", datatype="FP32", shape=[-1, n])])


@router.get("/models/{name}", response_model=ModelMetadata, responses=_ERRORS)
async def model_metadata(scorer: ModelDep) -> ModelMetadata:
    return _metadata(scorer)


@router.get("/models/{name}/versions/{version}", response_model=ModelMetadata, responses=_ERRORS)
async def model_version_metadata(scorer: VersionDep) -> ModelMetadata:
    return _metadata(scorer)


@router.get("/models/{name}/ready", response_model=ModelReady, responses=_ERRORS)
async def model_ready(scorer: ModelDep) -> ModelReady:
    return ModelReady(name=scorer.manifest.name, ready=True)


@router.get("/models/{name}/versions/{version}/ready", response_model=ModelReady, responses=_ERRORS)
async def model_version_ready(scorer: VersionDep) -> ModelReady:
    return ModelReady(name=scorer.manifest.name, ready=True)


# --- infer -------------------------------------------------------------------------------------------------


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON part and the binary part (binary tensor data extension)."""
    if header_length is None:
        return body, b""
    if not (header_length.isascii() and header_length.isdigit()) or int(header_length) > len(body):
        raise BadRequest(f"Inference-Header-Content-Length {header_length!r} does not fit the body "
                         f"of {len(body)} bytes")
    n = int(header_length)
    return body[:n], body[n:]


def _binary_size(tensor: RequestInput) -> int | None:
    size = (tensor.parameters or {}).get("binary_data_size")
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise BadRequest(f"input {tensor.name!r}: binary_data_size must be a non-negative integer")
    return size


def _flat(data: list[Any], what: str) -> np.ndarray:
    try:
        return np.asarray(data).reshape(-1)
    except ValueError as exc:  # ragged nesting
        raise BadRequest(f"{what}: data is not a regular (rectangular) array: {exc}") from None


def _leaves(data: list[Any]) -> Iterator[Any]:
    """The elements of a flat or nested JSON array, in row-major order, types kept."""
    for item in data:
        if isinstance(item, list):
            yield from _leaves(item)
        else:
            yield item


def _pixels(tensor: RequestInput, binary: bytes | None, ctx_limit: tuple[int, int]) -> np.ndarray:
    """UINT8 [N, H, W, 3] -> uint8 array, every limit checked before the data is read."""
    max_images, max_pixels = ctx_limit
    shape = tensor.shape
    if len(shape) != 4 or shape[3] != 3 or min(shape) < 1:
        raise BadRequest(f"input {PIXELS!r} (UINT8) must have shape [N, H, W, 3] with N, H, W >= 1; got {shape}")
    n, h, w, _ = shape
    if n > max_images:
        raise BadRequest(f"{n} images in one request; the limit is {max_images}")
    if h * w > max_pixels:
        raise ImageTooLarge(f"images of {w}x{h} = {w * h} pixels; the limit is {max_pixels}")
    count = n * h * w * 3
    if binary is not None:
        if len(binary) != count:
            raise BadRequest(f"input {PIXELS!r}: {len(binary)} bytes of binary data for shape {shape} "
                             f"({count} bytes)")
        return np.frombuffer(binary, dtype=np.uint8).reshape(shape)
    flat = _flat(tensor.data or [], f"input {PIXELS!r}")
    if flat.size != count:
        raise BadRequest(f"input {PIXELS!r}: {flat.size} elements for shape {shape} ({count} elements)")
    if flat.dtype.kind not in "iu" or flat.min() < 0 or flat.max() > 255:
        raise BadRequest(f"input {PIXELS!r}: UINT8 data must be integers in 0..255")
    return flat.astype(np.uint8).reshape(shape)


def _files(tensor: RequestInput, binary: bytes | None, max_images: int) -> list[tuple[str, bytes]]:
    """BYTES [N]: base64 strings in JSON, or length-prefixed elements in binary."""
    if not tensor.shape or min(tensor.shape) < 1:
        raise BadRequest(f"input {FILES!r} (BYTES) must have shape [N] with N >= 1; got {tensor.shape}")
    n = math.prod(tensor.shape)
    if n > max_images:
        raise BadRequest(f"{n} images in one request; the limit is {max_images}")
    if binary is not None:
        elements, at = [], 0
        while at < len(binary):
            if at + 4 > len(binary):
                raise BadRequest(f"input {FILES!r}: truncated element length in the binary data")
            (size,) = struct.unpack_from("<I", binary, at)
            elements.append(binary[at + 4 : at + 4 + size])
            at += 4 + size
        if at != len(binary) or len(elements) != n:
            raise BadRequest(f"input {FILES!r}: the binary data holds {len(elements)} elements for shape "
                             f"{tensor.shape}, or its last one is truncated")
    else:
        strings = list(_leaves(tensor.data or []))
        if len(strings) != n:
            raise BadRequest(f"input {FILES!r}: {len(strings)} elements for shape {tensor.shape}")
        if not all(isinstance(s, str) for s in strings):
            raise BadRequest(f"input {FILES!r}: each element must be a string (the file, base64-encoded)")
        try:
            elements = [base64.b64decode(s, validate=True) for s in strings]
        except (binascii.Error, ValueError):
            raise BadRequest(f"input {FILES!r}: an element is not valid base64") from None
    return [(f"element {i}", e) for i, e in enumerate(elements)]


def _parse(body: bytes, header_length: str | None) -> tuple[InferenceRequest, bytes | None]:
    """The request and its one input's binary data (None when the data is in the JSON)."""
    head, tail = _split_body(body, header_length)
    try:
        req = InferenceRequest.model_validate_json(head)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()[:5])
        raise BadRequest(f"not a V2 inference request: {problems}") from None
    if len(req.inputs) != 1:
        raise BadRequest(f"send exactly one input, {PIXELS!r} (UINT8) or {FILES!r} (BYTES); got {len(req.inputs)}")
    size = _binary_size(req.inputs[0])
    if size is None and req.inputs[0].data is None:
        raise BadRequest(f"input {req.inputs[0].name!r} has neither data nor binary_data_size")
    if size is not None and size != len(tail):
        raise BadRequest(f"binary_data_size {size} but {len(tail)} bytes of binary data follow the JSON")
    if size is None and tail:
        raise BadRequest("binary data follows the JSON but no input declares binary_data_size")
    return req, (tail if size is not None else None)


def _wanted(req: InferenceRequest) -> tuple[list[str], bool]:
    """The outputs to return, in order, and whether they need an explanation."""
    explain = (req.parameters or {}).get("explain", False)
    if not isinstance(explain, bool):
        raise BadRequest("parameter 'explain' must be a boolean")
    if req.outputs is None:
        return list(SCORE_OUTPUTS + EXPLAIN_OUTPUTS if explain else SCORE_OUTPUTS), explain
    names = [o.name for o in req.outputs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:  # each would be serialised again: a small request could ask for an answer a thousand times larger
        raise BadRequest(f"outputs {repeated} are asked for more than once; name each output once")
    unknown = [n for n in names if n not in SCORE_OUTPUTS + EXPLAIN_OUTPUTS]
    if unknown:
        raise BadRequest(f"unknown outputs {unknown}; this model has {list(SCORE_OUTPUTS + EXPLAIN_OUTPUTS)}")
    return names, explain or any(n in EXPLAIN_OUTPUTS for n in names)


Prepared = tuple[InferenceRequest, list[str], bool, np.ndarray | list[tuple[str, bytes]]]


def _prepare(body: bytes, header_length: str | None, settings: Settings, size: int) -> Prepared:
    """The request, its outputs, whether to explain, and its images: pixels at the model's size, or the
    encoded files (decoded by the caller, like uploads)."""
    req, binary = _parse(body, header_length)
    names, explain = _wanted(req)
    tensor = req.inputs[0]
    if tensor.name == PIXELS and tensor.datatype == "UINT8":
        pixels = _pixels(tensor, binary, (settings.max_batch_images, settings.max_image_pixels))
        return req, names, explain, resize_pixels(pixels, size)
    if tensor.name == FILES and tensor.datatype == "BYTES":
        return req, names, explain, _files(tensor, binary, settings.max_batch_images)
    raise BadRequest(f"input {tensor.name!r} of datatype {tensor.datatype!r}: this model takes {PIXELS!r} "
                     f"(UINT8 [N, H, W, 3]) or {FILES!r} (BYTES [N], base64 in JSON)")


async def _infer(request: Request, ctx: ScoringDep, scorer: Scorer) -> Response:
    body = await request.body()
    t0 = time.perf_counter()
    args = (body, request.headers.get(HEADER_LENGTH), ctx.settings, scorer.size)
    # parsing a large JSON tensor (and resizing its pixels) takes long enough to stall the event loop
    req, names, explain, data = (_prepare(*args) if len(body) <= INLINE_BODY_BYTES
                                 else await run_in_threadpool(_prepare, *args))
    views = pixel_views(data) if isinstance(data, np.ndarray) else await decode_uploads(ctx, data)
    decode_s = time.perf_counter() - t0
    v = await score_views(ctx, views)
    n = len(views)
    out: dict[str, ResponseOutput] = {
        "score": ResponseOutput(name="score", datatype="FP32", shape=[n], data=v.scores),
        "backdoor": ResponseOutput(name="backdoor", datatype="BOOL", shape=[n], data=v.flags),
        "threshold": ResponseOutput(name="threshold", datatype="FP32", shape=[1], data=[v.threshold]),
        "view": ResponseOutput(name="view", datatype="BYTES", shape=[n], data=v.views),
        "incident": ResponseOutput(name="incident", datatype="BOOL", shape=[n], data=v.incidents),
    }
    if all(p is not None for p in v.p_values):  # a bundle with calibration scores
        out["p_value"] = ResponseOutput(name="p_value", datatype="FP64", shape=[n], data=v.p_values)
    if explain:
        ex = await ctx.explainer.explain(v.pixels)
        out["reconstruction"] = ResponseOutput(name="reconstruction", datatype="BYTES", shape=[n],
                                               data=[e.reconstruction_png for e in ex])
        out["error_map"] = ResponseOutput(name="error_map", datatype="BYTES", shape=[n],
                                          data=[e.error_map_png for e in ex])
        out["patch_errors"] = ResponseOutput(name="patch_errors", datatype="FP32",
                                             shape=[n, len(ex[0].patch_errors)],
                                             data=[v for e in ex for v in e.patch_errors])
    observe(ctx, v, decode_s)
    m = scorer.manifest
    answer = InferenceResponse(model_name=m.name, model_version=m.version, id=req.id,
                               outputs=[out[name] for name in names if name in out])
    return Response(answer.model_dump_json(exclude_none=True), media_type="application/json")


@router.post("/models/{name}/infer", response_model=InferenceResponse, response_model_exclude_none=True,
             responses=_ERRORS, openapi_extra=_INFER_BODY)
async def infer(request: Request, ctx: ScoringDep, scorer: ModelDep) -> Response:
    """Score images: one input, ``image`` (UINT8 [N, H, W, 3]) or ``image_bytes`` (BYTES [N], base64)."""
    return await _infer(request, ctx, scorer)


@router.post("/models/{name}/versions/{version}/infer", response_model=InferenceResponse,
             response_model_exclude_none=True, responses=_ERRORS, openapi_extra=_INFER_BODY)
async def infer_version(request: Request, ctx: ScoringDep, scorer: VersionDep) -> Response:
    return await _infer(request, ctx, scorer)

