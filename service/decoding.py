"""Decoding uploads: on threads of its own, within a memory budget that every request shares.

Like MLServer keeps request parsing apart from model workers, decoding never runs on the model's threads: a slow
image (a progressive JPEG at the scan limit, a large PNG) occupies one of ``DEDE_DECODE_THREADS`` decode threads
and the batcher goes on scoring. Before an image is decoded, its worst-case footprint (``imaging.decode_cost``)
is reserved from ``DEDE_DECODE_BUDGET_BYTES``, for the request's images together, so the decoded pixels of all
requests in flight never exceed the budget: a request that would exceed it waits (up to the request timeout,
then 503), and one that needs more than the whole budget is refused (413). Each image's share is given back when
its decode thread finishes, also when the request stopped waiting for it (``DEDE_DECODE_TIMEOUT_S``, 422): the
budget bounds the memory of decodes that are still running, not of those a request still waits for.

Small images (``INLINE_DECODE_PIXELS``, not progressive) are decoded on the event loop: for a CIFAR-sized PNG
the hand-off to a thread and back cost more CPU than the decoding (py-spy under ``make bench``)."""

from __future__ import annotations

import asyncio
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from service.errors import BadImage, ImageTooComplex, ImageTooLarge, Overloaded
from service.imaging import Image, decode_cost, load_views, open_image, view_count
from service.settings import Settings

INLINE_DECODE_PIXELS = 128 * 128  # images at most this large (and not progressive) are decoded on the event loop
Views = list[tuple[str, np.ndarray]]  # (view name, uint8 (size, size, 3)) for one upload


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


class ByteBudget:
    """Bytes reserved by all requests of this process together. A reservation that fits is granted at once, also
    past others that wait for more (first fit: a small image never queues behind a large one; a large one waits
    until the small ones in flight leave it room). Used on the event loop only; ``release_threadsafe`` gives bytes
    back from another thread."""

    def __init__(self, total: int, what: str) -> None:
        self.total, self.what, self.used = total, what, 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def acquire(self, n: int, timeout_s: float) -> None:
        """Reserve ``n`` bytes (at most ``total``: the caller refuses larger requests), waiting up to ``timeout_s``."""
        self._loop = asyncio.get_running_loop()
        if self.used + n <= self.total:
            self.used += n
            return
        fut: asyncio.Future[None] = self._loop.create_future()
        entry = (n, fut)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            raise Overloaded(f"{self.what}: {mib(self.used)} of {mib(self.total)} in use by other requests for "
                             f"{timeout_s:g} s; retry later") from None
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)
                self._wake()

    def release(self, n: int) -> None:
        self.used -= n
        self._wake()

    def release_threadsafe(self, n: int) -> None:
        if self._loop is None or self._loop.is_closed():
            self.used -= n
        else:
            self._loop.call_soon_threadsafe(self.release, n)

    def _wake(self) -> None:
        for entry in list(self._waiters):
            n, fut = entry
            if fut.done():
                self._waiters.remove(entry)
            elif self.used + n <= self.total:
                self._waiters.remove(entry)
                self.used += n
                fut.set_result(None)


def _named(exc: BadImage, i: int, name: str, many: bool) -> BadImage:
    if many:
        exc.message = f"image {i} ({name}): {exc.message}"
    return exc


def _load_and_close(img: Image.Image, size: int, exif: str, alpha: str) -> Views:
    """In a decode thread: the image's views; the image is closed here, when its decode is over."""
    try:
        return load_views(img, size, exif, alpha)
    finally:
        img.close()


class Decoder:
    """Encoded uploads -> their views, for one model input ``size``; see the module docstring."""

    def __init__(self, settings: Settings, size: int) -> None:
        self.settings, self.size = settings, size
        self.budget = ByteBudget(settings.decode_budget_bytes, "the decode budget (DEDE_DECODE_BUDGET_BYTES)")
        self.pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="dede-decode")

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _open(self, uploads: list[tuple[str, bytes]]) -> list[Image.Image]:
        """Every upload's header (limits checked), or the first upload's error with every opened image closed."""
        s, many, opened = self.settings, len(uploads) > 1, []
        try:
            for i, (name, data) in enumerate(uploads):
                try:
                    opened.append(open_image(data, s.max_image_pixels, self.size, s.max_jpeg_scans))
                except BadImage as exc:
                    raise _named(exc, i, name, many) from None
        except BaseException:
            for img in opened:
                img.close()
            raise
        return opened

    async def decode(self, uploads: list[tuple[str, bytes]]) -> list[Views]:
        """Each upload's views, in upload order; a ``BadImage`` names the file when there are several."""
        s, many = self.settings, len(uploads) > 1
        images = self._open(uploads)
        costs = [decode_cost(img, self.size, view_count(img, s.exif, s.alpha)) for img in images]
        try:
            if sum(costs) > self.budget.total:
                what = "the image needs" if not many else f"the {len(uploads)} images of this request need"
                raise ImageTooLarge(f"{what} about {mib(sum(costs))} to decode; the decode budget "
                                    f"(DEDE_DECODE_BUDGET_BYTES) is {mib(self.budget.total)}")
            await self.budget.acquire(sum(costs), s.request_timeout_s)
        except BaseException:
            for img in images:
                img.close()
            raise
        pending: list[tuple[int, asyncio.Future[Views]]] = []
        out: dict[int, Views] = {}
        first_error: BadImage | None = None
        for i, (img, cost) in enumerate(zip(images, costs, strict=True)):
            if first_error is not None:  # a file before failed: the rest are not decoded
                img.close()
                self.budget.release(cost)
            elif img.width * img.height <= INLINE_DECODE_PIXELS and not img.info.get("progressive"):
                try:
                    out[i] = _load_and_close(img, self.size, s.exif, s.alpha)
                except BadImage as exc:
                    first_error = _named(exc, i, uploads[i][0], many)
                finally:
                    self.budget.release(cost)
            else:
                job: Future[Views] = self.pool.submit(_load_and_close, img, self.size, s.exif, s.alpha)
                job.add_done_callback(lambda _, c=cost: self.budget.release_threadsafe(c))  # type: ignore[misc]
                pending.append((i, asyncio.wrap_future(job)))
        if pending:  # one deadline: a decode's time budget for each round of the decode threads
            rounds = -(-len(pending) // s.decode_threads)
            done, late = await asyncio.wait([f for _, f in pending], timeout=s.decode_timeout_s * rounds)
            for fut in late:  # a job not started is dropped; a running one finishes and gives its budget back then
                fut.cancel()
            for i, fut in pending:
                failure = None if fut in late else fut.exception()
                if fut in late:
                    failure = ImageTooComplex(f"the image took longer than {s.decode_timeout_s:g} s to decode "
                                              "(DEDE_DECODE_TIMEOUT_S)")
                if failure is None:
                    out[i] = fut.result()
                elif not isinstance(failure, BadImage):
                    raise failure
                elif first_error is None:
                    first_error = _named(failure, i, uploads[i][0], many)
        if first_error is not None:
            raise first_error
        return [out[i] for i in range(len(uploads))]
