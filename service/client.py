"""A small Python client for the DeDe service: sync and async, single and batch, retries with exponential
backoff on 503 (overloaded or not ready) and on connection errors.

    from service.client import DedeClient
    with DedeClient("http://127.0.0.1:8000") as dede:
        result = dede.score(open("img.png", "rb").read())        # ScoreResult(backdoor=..., score=...)
        results = dede.score_batch([png1, png2])

Images are passed as encoded bytes (PNG/JPEG/...), a PIL image, or a uint8 array (H, W, 3).
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import httpx
import numpy as np
from PIL import Image

ImageLike = Any  # bytes | PIL.Image.Image | np.ndarray


@dataclass(frozen=True)
class Verdict:
    backdoor: bool
    score: float
    threshold: float
    model: str
    model_version: str
    view: str = "stored"  # the view the score belongs to (see service.pipeline)
    p_value: float | None = None  # conformal p-value (None: a bundle without calibration scores)
    incident: bool = False  # past the incident threshold
    reason: str | None = None  # "degenerate": a flat or empty image, never an alert


_VERDICT_FIELDS = frozenset(f.name for f in fields(Verdict))


class DedeError(RuntimeError):
    """The service answered with an error (after retries for 503)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


def to_bytes(image: ImageLike) -> bytes:
    if isinstance(image, bytes | bytearray):
        return bytes(image)
    if isinstance(image, np.ndarray):
        image = Image.fromarray(np.asarray(image, dtype=np.uint8))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def _files(images: Sequence[ImageLike]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (f"{i}.png", to_bytes(img), "application/octet-stream")) for i, img in enumerate(images)]


def _parse(response: httpx.Response) -> list[Verdict]:
    if response.status_code != 200:
        try:
            err = response.json()["error"]
            raise DedeError(response.status_code, err["code"], err["message"])
        except (ValueError, KeyError):
            raise DedeError(response.status_code, "http_error", response.text[:200]) from None
    body = response.json()
    return [Verdict(**{k: v for k, v in r.items() if k in _VERDICT_FIELDS}) for r in body.get("results", [body])]


def _retry_wait(attempt: int, retries: int, response: httpx.Response | None, backoff: float) -> float | None:
    """Seconds to wait before the next attempt, or None when this outcome is final: a response that is not
    503, or the last attempt. ``response`` None means a connection error. Honours Retry-After."""
    if attempt == retries or (response is not None and response.status_code != 503):
        return None
    retry_after = response.headers.get("retry-after") if response is not None else None
    base = float(retry_after) if retry_after and retry_after.isascii() and retry_after.isdigit() else 0.0
    return max(base, backoff * 2**attempt)


def _final(response: httpx.Response | None) -> httpx.Response:
    if response is None:
        raise httpx.ConnectError("the DeDe service could not be reached (all retries failed)")
    return response


class DedeClient:
    def __init__(self, url: str, api_key: str | None = None, timeout: float = 30.0, retries: int = 4,
                 backoff: float = 0.1, transport: httpx.BaseTransport | None = None,
                 http: httpx.Client | None = None) -> None:
        headers = {"x-api-key": api_key} if api_key else {}
        self.http = http or httpx.Client(base_url=url, headers=headers, timeout=timeout, transport=transport)
        self.retries, self.backoff = retries, backoff

    def __enter__(self) -> DedeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _post(self, path: str, **kwargs: Any) -> httpx.Response:
        for attempt in range(self.retries + 1):
            try:
                response: httpx.Response | None = self.http.post(path, **kwargs)
            except httpx.TransportError:
                response = None
            wait = _retry_wait(attempt, self.retries, response, self.backoff)
            if wait is None:
                break
            time.sleep(wait)
        return _final(response)

    def score(self, image: ImageLike) -> Verdict:
        return _parse(self._post("/score", files={"file": ("image", to_bytes(image), "application/octet-stream")}))[0]

    def score_batch(self, images: Sequence[ImageLike]) -> list[Verdict]:
        return _parse(self._post("/score/batch", files=_files(images))) if images else []


class AsyncDedeClient:
    def __init__(self, url: str, api_key: str | None = None, timeout: float = 30.0, retries: int = 4,
                 backoff: float = 0.1, transport: httpx.AsyncBaseTransport | None = None) -> None:
        headers = {"x-api-key": api_key} if api_key else {}
        self.http = httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout, transport=transport)
        self.retries, self.backoff = retries, backoff

    async def __aenter__(self) -> AsyncDedeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()

    async def _post(self, path: str, **kwargs: Any) -> httpx.Response:
        for attempt in range(self.retries + 1):
            try:
                response: httpx.Response | None = await self.http.post(path, **kwargs)
            except httpx.TransportError:
                response = None
            wait = _retry_wait(attempt, self.retries, response, self.backoff)
            if wait is None:
                break
            await asyncio.sleep(wait)
        return _final(response)

    async def score(self, image: ImageLike) -> Verdict:
        files = {"file": ("image", to_bytes(image), "application/octet-stream")}
        return _parse(await self._post("/score", files=files))[0]

    async def score_batch(self, images: Sequence[ImageLike]) -> list[Verdict]:
        return _parse(await self._post("/score/batch", files=_files(images))) if images else []
