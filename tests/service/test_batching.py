import asyncio
import threading
import time

import numpy as np
import pytest

from service.app import make_runner
from service.batching import Batcher, DirectRunner, Runner
from service.errors import Overloaded
from service.scoring import ScoreResult
from service.settings import Settings


class Model:
    """Scores an image by its mean pixel; records the size of every call."""

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.calls: list[int] = []
        self.delay, self.fail = delay, fail
        self.lock = threading.Lock()

    def __call__(self, images: np.ndarray) -> ScoreResult:
        with self.lock:
            self.calls.append(len(images))
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("model exploded")
        scores = images.reshape(len(images), -1).mean(1).astype(np.float32)
        return ScoreResult(scores, scores > 100, 100.0, {"encoder": 0.0})


def images(value: int, k: int = 1) -> np.ndarray:
    return np.full((k, 2, 2, 3), value, np.uint8)


def test_concurrent_requests_share_batches_and_get_their_own_results() -> None:
    async def main() -> tuple[list[ScoreResult], Model]:
        model = Model(delay=0.02)
        b = Batcher(model, max_batch_size=16, max_wait_ms=20, max_queue=64)
        results = await asyncio.gather(*(b.submit(images(v, 1 + v % 3)) for v in range(20)))
        await b.stop()
        return results, model

    results, model = asyncio.run(main())
    for v, r in enumerate(results):
        assert len(r.scores) == 1 + v % 3
        assert np.all(r.scores == v)
    assert sum(model.calls) == sum(1 + v % 3 for v in range(20))
    assert len(model.calls) < 20  # batched
    assert max(model.calls) <= 16 + 2  # a request is never split


def test_a_failure_reaches_every_waiter() -> None:
    async def main() -> list[BaseException | ScoreResult]:
        b = Batcher(Model(fail=True), max_batch_size=8, max_wait_ms=20)
        out = await asyncio.gather(*(b.submit(images(v)) for v in range(5)), return_exceptions=True)
        # the worker survives a failed batch
        b.fn = Model()
        out.append(await b.submit(images(7)))
        await b.stop()
        return out

    out = asyncio.run(main())
    assert all(isinstance(o, RuntimeError) and "exploded" in str(o) for o in out[:5])
    assert isinstance(out[5], ScoreResult) and out[5].scores[0] == 7


@pytest.mark.parametrize("runner_cls", [Batcher, DirectRunner])
def test_full_queue_is_refused_at_once(runner_cls: type) -> None:
    async def main() -> tuple[int, int]:
        kwargs = {"max_batch_size": 2} if runner_cls is Batcher else {}
        r = runner_cls(Model(delay=0.2), max_queue=4, **kwargs)
        start = time.perf_counter()
        out = await asyncio.gather(*(r.submit(images(v, 2)) for v in range(6)), return_exceptions=True)
        refused = sum(isinstance(o, Overloaded) for o in out)
        await r.stop()
        assert time.perf_counter() - start < 2.0
        return refused, len(out) - refused

    refused, ok = asyncio.run(main())
    assert refused >= 3 and ok >= 1


@pytest.mark.parametrize("runner_cls", [Batcher, DirectRunner])
def test_timeout_gives_overloaded(runner_cls: type) -> None:
    async def main() -> None:
        r = runner_cls(Model(delay=0.5), timeout_s=0.05)
        with pytest.raises(Overloaded, match="did not finish"):
            await r.submit(images(1))
        await r.stop()

    asyncio.run(main())


def test_stop_drains_in_flight_requests() -> None:
    async def main() -> list[ScoreResult]:
        b = Batcher(Model(delay=0.05), max_batch_size=2, max_wait_ms=1)
        tasks = [asyncio.create_task(b.submit(images(v))) for v in range(6)]
        await asyncio.sleep(0.01)  # all six are queued
        assert b.depth == 6
        await b.stop()
        assert b.depth == 0
        return list(await asyncio.gather(*tasks))  # every queued request was scored, none cancelled

    assert [r.scores[0] for r in asyncio.run(main())] == list(range(6))


def test_bad_sizes() -> None:
    with pytest.raises(ValueError):
        Batcher(Model(), max_batch_size=8, max_queue=4)


def test_concurrency_runs_batches_at_once_and_keeps_results_apart() -> None:
    """With ``concurrency=2`` a second batch starts while the first is still in the model."""
    lock, state = threading.Lock(), {"now": 0, "max": 0}

    class Slow(Model):
        def __call__(self, images: np.ndarray) -> ScoreResult:
            with lock:
                state["now"] += 1
                state["max"] = max(state["max"], state["now"])
            try:
                return super().__call__(images)
            finally:
                with lock:
                    state["now"] -= 1

    async def main() -> tuple[list[ScoreResult], Model]:
        model = Slow(delay=0.05)
        b = Batcher(model, max_batch_size=2, max_wait_ms=0, max_queue=64, concurrency=2)
        results = await asyncio.gather(*(b.submit(images(v)) for v in range(8)))
        await b.stop()
        return results, model

    results, model = asyncio.run(main())
    assert [float(r.scores[0]) for r in results] == list(range(8))
    assert state["max"] == 2  # two batches in the model at once, never more
    with pytest.raises(ValueError):
        Batcher(Model(), concurrency=0)


@pytest.mark.parametrize(("batching", "kind"), [(True, Batcher), (False, DirectRunner)])
def test_the_settings_pick_the_runner(batching: bool, kind: type) -> None:
    async def main() -> tuple[Runner, ScoreResult, int]:
        runner = make_runner(Settings(batching=batching, max_batch_size=4, max_queue=8), Model())
        runner.start()
        try:
            result = await runner.submit(images(7, 2))
        finally:
            await runner.stop()
        return runner, result, runner.depth

    runner, result, depth = asyncio.run(main())
    assert isinstance(runner, kind) and depth == 0
    assert result.scores.tolist() == [7.0, 7.0]
