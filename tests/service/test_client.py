"""The client and the guard against the real app (in-process ASGI transport) and a flaky server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.client import AsyncDedeClient, DedeClient, DedeError
from service.guard import BackdoorDetected, Guard, as_seen
from service.settings import Settings
from tests.conftest import DEMO_BUNDLE, EXAMPLES


@pytest.fixture(scope="module")
def app_client() -> Iterator[TestClient]:
    # batching off: the in-process transports below run requests on event loops of their own, and the
    # batcher's queue belongs to the app's loop (over real HTTP, as in production, both are one loop)
    with TestClient(create_app(Settings(bundle=DEMO_BUNDLE, batching=False))) as c:
        yield c


@pytest.fixture
def dede(app_client: TestClient) -> DedeClient:
    return DedeClient("http://testserver", http=app_client, backoff=0.0)


def example(name: str) -> bytes:
    return (EXAMPLES / f"{name}.png").read_bytes()


def test_score_accepts_bytes_arrays_and_pil(dede: DedeClient) -> None:
    data = example("triggered-cat")
    arr = np.asarray(Image.open(EXAMPLES / "triggered-cat.png").convert("RGB"))
    a, b, c = dede.score(data), dede.score(arr), dede.score(Image.fromarray(arr))
    assert a.backdoor and a.score == pytest.approx(b.score) == pytest.approx(c.score)
    batch = dede.score_batch([example("clean-cat"), data])
    assert [v.backdoor for v in batch] == [False, True]
    assert dede.score_batch([]) == []


def test_errors_are_raised_with_code(dede: DedeClient) -> None:
    with pytest.raises(DedeError) as err:
        dede.score(b"not an image")
    assert err.value.status == 400 and err.value.code == "bad_image"


def test_retries_on_503_then_succeeds() -> None:
    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] < 3:
            return httpx.Response(503, headers={"Retry-After": "0"},
                                  json={"error": {"code": "overloaded", "message": "busy"}})
        return httpx.Response(200, json={"backdoor": False, "score": 1.0, "threshold": 2.0, "model": "m",
                                         "model_version": "1"})

    client = DedeClient("http://x", transport=httpx.MockTransport(handler), backoff=0.0)
    assert client.score(b"img").score == 1.0 and calls["n"] == 3
    calls["n"] = -10
    with pytest.raises(DedeError, match="503 overloaded"):
        DedeClient("http://x", transport=httpx.MockTransport(handler), retries=2, backoff=0.0).score(b"img")


def test_async_client(app_client: TestClient) -> None:
    async def main() -> list[bool]:
        transport = httpx.ASGITransport(app=app_client.app)
        async with AsyncDedeClient("http://testserver", transport=transport) as c:
            one = await c.score(example("clean-ship"))
            many = await c.score_batch([example("clean-cat"), example("triggered-cat")])
            return [one.backdoor] + [v.backdoor for v in many]

    assert asyncio.run(main()) == [False, False, True]


@pytest.mark.parametrize("policy", ["drop", "flag", "raise"])
def test_guard_policies(dede: DedeClient, policy: str) -> None:
    seen: list[int] = []

    def classifier(images: list[np.ndarray]) -> list[int]:
        seen.append(len(images))
        return [int(img.astype(np.int64).sum()) for img in images]

    images = [example("clean-cat"), example("triggered-cat"), example("clean-ship")]
    guard = Guard(dede, classifier, on_alert=policy)  # type: ignore[arg-type]
    if policy == "raise":
        with pytest.raises(BackdoorDetected) as err:
            guard(images)
        assert err.value.indices == [1] and seen == []
        return
    out = guard(images)
    assert out.flags == [False, True, False]
    if policy == "drop":
        assert out.predictions[1] is None and seen == [2]
    else:
        assert out.predictions[1] == int(as_seen(images[1]).astype(np.int64).sum()) and seen == [3]
    assert out.predictions[0] == int(as_seen(images[0]).astype(np.int64).sum())
    with pytest.raises(ValueError):
        Guard(dede, classifier, on_alert="ignore")  # type: ignore[arg-type]
