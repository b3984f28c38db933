"""Dynamic micro-batching (the idea of Triton's dynamic_batcher and MLServer's adaptive batching).

Requests put their decoded images on a bounded queue and await a future. One worker takes the first
waiting request, gathers more until ``max_batch_size`` images or ``max_wait_ms`` have passed, runs the model
once (in a thread, off the event loop) and resolves each request's future with its own slice of the
result; an exception reaches every waiter of that batch. When the queue holds ``max_queue`` images, new
requests are refused at once with ``Overloaded`` (HTTP 503 + Retry-After) instead of waiting longer and
longer; a request that waits more than ``timeout_s`` gets a 503 too. ``DirectRunner`` is the same without
batching; both are a ``Runner``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from starlette.concurrency import run_in_threadpool

from service.errors import Overloaded
from service.scoring import ScoreResult


class Runner(Protocol):
    """What the scoring routes submit images to: ``Batcher`` (dynamic batching) or ``DirectRunner`` (off)."""

    @property
    def depth(self) -> int:
        """Images waiting or being scored."""
        ...

    def start(self) -> None:
        """Start working (inside the running event loop)."""
        ...

    async def stop(self) -> None:
        """Finish what is queued, then stop (graceful shutdown)."""
        ...

    async def submit(self, images: np.ndarray) -> ScoreResult:
        """The result for uint8 (k, H, W, 3) images; ``Overloaded`` when the queue is full or scoring is too slow."""
        ...


@dataclass
class _Pending:
    images: np.ndarray  # (k, H, W, 3)
    future: asyncio.Future[ScoreResult]


def _expire(future: asyncio.Future[ScoreResult], timeout_s: float) -> None:
    if not future.done():
        future.set_exception(Overloaded(f"scoring did not finish within {timeout_s:g} s; retry later"))


def split_result(result: ScoreResult, sizes: list[int]) -> list[ScoreResult]:
    """One batch result -> one result per request, in order."""
    out, start = [], 0
    for k in sizes:
        out.append(ScoreResult(result.scores[start : start + k], result.flags[start : start + k],
                               result.threshold, result.seconds))
        start += k
    return out


class DirectRunner:
    """Batching off: every request runs the model on its own images (in a thread), with the same
    bounded-queue and timeout behaviour as ``Batcher``."""

    def __init__(self, fn: Callable[[np.ndarray], ScoreResult], max_queue: int = 1024,
                 timeout_s: float = 30.0) -> None:
        self.fn, self.max_queue, self.timeout_s = fn, max_queue, timeout_s
        self._queued_images = 0

    @property
    def depth(self) -> int:
        return self._queued_images

    def start(self) -> None:
        pass

    async def stop(self) -> None:
        while self._queued_images:
            await asyncio.sleep(0.01)

    async def submit(self, images: np.ndarray) -> ScoreResult:
        if self._queued_images + len(images) > self.max_queue:
            raise Overloaded(f"the scoring queue is full ({self._queued_images} images waiting); retry later")
        self._queued_images += len(images)
        try:
            async with asyncio.timeout(self.timeout_s):
                return await run_in_threadpool(self.fn, images)
        except TimeoutError as exc:
            raise Overloaded(f"scoring did not finish within {self.timeout_s:g} s; retry later") from exc
        finally:
            self._queued_images -= len(images)


class Batcher:
    def __init__(self, fn: Callable[[np.ndarray], ScoreResult], max_batch_size: int = 64,
                 max_wait_ms: float = 2.0, max_queue: int = 1024, timeout_s: float = 30.0,
                 concurrency: int = 1) -> None:
        if max_batch_size < 1 or max_queue < max_batch_size or concurrency < 1:
            raise ValueError("need max_batch_size >= 1, max_queue >= max_batch_size and concurrency >= 1")
        self.fn, self.max_batch_size, self.max_wait = fn, max_batch_size, max_wait_ms / 1000
        self.max_queue, self.timeout_s = max_queue, timeout_s
        self._slots = asyncio.Semaphore(concurrency)  # model calls in flight at once
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._queued_images = 0
        self._worker: asyncio.Task[None] | None = None

    @property
    def depth(self) -> int:
        """Images waiting or being scored."""
        return self._queued_images

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Finish what is queued, then stop the worker (graceful shutdown)."""
        while self._queued_images:
            await asyncio.sleep(0.01)
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None

    async def submit(self, images: np.ndarray) -> ScoreResult:
        k = len(images)
        if self._queued_images + k > self.max_queue:
            raise Overloaded(f"the scoring queue is full ({self._queued_images} images waiting); retry later")
        self.start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ScoreResult] = loop.create_future()
        self._queued_images += k
        self._queue.put_nowait(_Pending(images, future))
        # a timer instead of asyncio.wait_for: no extra task per request (measured on the hot path)
        timer = loop.call_later(self.timeout_s, _expire, future, self.timeout_s)
        try:
            return await future
        finally:
            timer.cancel()

    async def _gather(self) -> list[_Pending]:
        """The first waiting request plus whatever arrives within ``max_wait``, up to ``max_batch_size``
        images (a request is never split, so one large request can make a batch larger)."""
        batch = [await self._queue.get()]
        size = len(batch[0].images)
        deadline = asyncio.get_running_loop().time() + self.max_wait
        while size < self.max_batch_size:
            try:
                nxt = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                try:
                    async with asyncio.timeout(remaining):
                        nxt = await self._queue.get()
                except TimeoutError:
                    break
            batch.append(nxt)
            size += len(nxt.images)
        return batch

    async def _run(self) -> None:
        """Gather a batch once a model slot is free (so requests keep collecting while the model is busy),
        then score it in a task of its own: with ``concurrency`` > 1 several batches run at once."""
        running: set[asyncio.Task[None]] = set()
        while True:
            await self._slots.acquire()
            try:
                batch = await self._gather()
            except BaseException:
                self._slots.release()
                raise
            task = asyncio.get_running_loop().create_task(self._score(batch))
            running.add(task)  # keep a reference until it is done
            task.add_done_callback(running.discard)

    async def _score(self, batch: list[_Pending]) -> None:
        sizes = [len(p.images) for p in batch]
        try:
            result = await run_in_threadpool(self.fn, np.concatenate([p.images for p in batch]))
            for p, r in zip(batch, split_result(result, sizes), strict=True):
                if not p.future.done():
                    p.future.set_result(r)
        except Exception as exc:  # every waiter of the failed batch gets the error
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
        finally:
            self._queued_images -= sum(sizes)
            self._slots.release()
