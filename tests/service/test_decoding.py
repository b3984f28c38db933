"""The decode threads and the memory budgets that every request shares (service.decoding, service.limits)."""

from __future__ import annotations

import asyncio
import io
import threading
import time

import numpy as np
import pytest
from PIL import Image

from service import decoding
from service.decoding import ByteBudget, Decoder
from service.errors import BadImage, ImageTooComplex, ImageTooLarge, Overloaded
from service.imaging import decode_cost, open_image
from service.settings import Settings
from tests.conftest import DEMO_BUNDLE


def png(side: int, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (side, side)).save(buf, "PNG")
    return buf.getvalue()


def test_budget_waits_for_bytes_and_gives_up_with_503() -> None:
    async def main() -> list[str]:
        budget, order = ByteBudget(100, "test budget"), []
        await budget.acquire(80, 1)

        async def second() -> None:
            await budget.acquire(50, 1)
            order.append("second")

        task = asyncio.create_task(second())
        await asyncio.sleep(0.05)
        assert not order and budget.used == 80  # waiting: 80 + 50 > 100
        await asyncio.wait_for(budget.acquire(15, 1), 0.01)  # a small one that fits passes the waiting one at once
        budget.release(15)
        budget.release(80)
        await task
        assert budget.used == 50 and order == ["second"]
        with pytest.raises(Overloaded, match="test budget: 50.0 MiB|test budget"):
            await budget.acquire(60, 0.05)
        assert budget.used == 50 and not budget._waiters  # the one that gave up holds nothing
        threading.Thread(target=budget.release_threadsafe, args=(50,)).start()
        await asyncio.sleep(0.05)
        return order

    asyncio.run(main())


def decoder(**settings: object) -> Decoder:
    """A decoder for 32-px inputs; images up to 600 x 600 (so that small budgets pass the settings' check)."""
    return Decoder(Settings(bundle=DEMO_BUNDLE, max_image_pixels=600 * 600, **settings), 32)  # type: ignore[arg-type]


def test_a_request_larger_than_the_decode_budget_is_refused_with_the_budget_named() -> None:
    with open_image(png(600)) as img:
        one = decode_cost(img, 32)
    d = decoder(decode_budget_bytes=one + 1)
    try:
        views = asyncio.run(d.decode([("a", png(600))]))
        assert views[0][0][1].shape == (32, 32, 3) and d.budget.used == 0
        with pytest.raises(ImageTooLarge, match="DEDE_DECODE_BUDGET_BYTES"):
            asyncio.run(d.decode([("a", png(600)), ("b", png(600))]))
    finally:
        d.close()


def test_concurrent_decodes_never_hold_more_than_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    with open_image(png(600)) as img:
        one = decode_cost(img, 32)
    d, peak = decoder(decode_budget_bytes=2 * one, decode_threads=4), [0]
    real = decoding.load_views

    def watched(*args: object) -> object:
        peak[0] = max(peak[0], d.budget.used)
        time.sleep(0.02)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(decoding, "load_views", watched)

    async def main() -> None:
        await asyncio.gather(*(d.decode([(str(i), png(600))]) for i in range(8)))

    try:
        asyncio.run(main())
    finally:
        d.close()
    assert 0 < peak[0] <= 2 * one and d.budget.used == 0


def test_a_slow_decode_is_answered_and_keeps_its_budget_until_it_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    d = decoder(decode_timeout_s=0.1)
    done = threading.Event()

    def slow(*args: object) -> object:
        time.sleep(0.5)
        done.set()
        return [("stored", np.zeros((32, 32, 3), np.uint8))]

    monkeypatch.setattr(decoding, "load_views", slow)

    async def main() -> int:
        with pytest.raises(ImageTooComplex, match="longer than 0.1 s"):
            await d.decode([("a", png(200))])
        held = d.budget.used
        while not done.is_set():
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.05)
        return held

    try:
        assert asyncio.run(main()) > 0 and d.budget.used == 0
    finally:
        d.close()


def test_a_bad_file_among_several_is_named_and_nothing_stays_reserved() -> None:
    d = decoder()
    try:
        with pytest.raises(BadImage) as err:
            asyncio.run(d.decode([("a", png(300)), ("b", b"not an image"), ("c", png(300))]))
        assert err.value.message.startswith("image 1 (b): ") and d.budget.used == 0
    finally:
        d.close()


def test_request_bodies_share_the_upload_budget() -> None:
    """Each body is held at twice its declared length from its first read until its answer: a second body that
    does not fit waits for the first to be answered (or, past the timeout, gets 503)."""
    from service.limits import BodySizeLimit

    release, events = asyncio.Event(), []

    async def app(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
        await receive()  # type: ignore[operator]
        events.append(("read", scope["path"]))
        if scope["path"] == "/slow":
            await release.wait()
        events.append(("answered", scope["path"]))

    def call(path: str, length: int) -> object:
        async def receive() -> dict:  # type: ignore[type-arg]
            return {"type": "http.request", "body": b"x" * length, "more_body": False}

        scope = {"type": "http", "path": path, "headers": [(b"content-length", str(length).encode())]}
        return limited(scope, receive, None)

    async def main() -> None:
        nonlocal limited
        budget = ByteBudget(1000, "the upload budget (DEDE_UPLOAD_BUDGET_BYTES)")
        limited = BodySizeLimit(app, max_bytes=500, budget=budget, timeout_s=5)
        slow = asyncio.create_task(call("/slow", 300))  # holds 600
        await asyncio.sleep(0.05)
        fast = asyncio.create_task(call("/fast", 300))  # 600 more do not fit: waits
        await asyncio.sleep(0.05)
        assert ("read", "/fast") not in events and budget.used == 600
        release.set()
        await asyncio.gather(slow, fast)
        assert events.index(("answered", "/slow")) < events.index(("read", "/fast")) and budget.used == 0
        limited = BodySizeLimit(app, max_bytes=500, budget=ByteBudget(1000, "b"), timeout_s=0.05)
        release.clear()
        slow = asyncio.create_task(call("/slow", 300))
        await asyncio.sleep(0.02)
        with pytest.raises(Overloaded):
            await call("/fast", 300)
        release.set()
        await slow

    limited: BodySizeLimit
    asyncio.run(main())
