"""The micro-batcher's semantics, with fake backends (plain functions)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Sequence
from functools import wraps
from typing import Any

import pytest
from batchserve import batcher as batcher_module
from batchserve.batcher import Batcher
from batchserve.errors import (
    BackendContractError,
    BackendError,
    ClientDisconnected,
    DeadlineExceeded,
    InvalidInput,
    QueueFull,
    ShuttingDown,
)
from batchserve.inflight import WATCH_AFTER_S
from batchserve.metrics import Metrics
from batchserve.metrics_bulk import Histograms
from prometheus_client import CollectorRegistry


def run(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    @wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(test(*args, **kwargs), timeout=30))
    return wrapper


class Fake:
    """Records every batch; ``gate`` (when set up) holds the executor until released."""

    def __init__(self, fn: Callable[[list[Any]], Sequence[Any]] | None = None) -> None:
        self.batches: list[list[Any]] = []
        self.fn = fn or (lambda rows: [row * 2 for row in rows])
        self.entered = threading.Event()
        self.gate: threading.Event | None = None

    def hold(self) -> None:
        self.gate = threading.Event()

    def release(self) -> None:
        assert self.gate is not None
        self.gate.set()

    def __call__(self, rows: list[Any]) -> Sequence[Any]:
        self.batches.append(list(rows))
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        return self.fn(rows)

    @property
    def rows_seen(self) -> list[Any]:
        return [row for batch in self.batches for row in batch]


def make(fake: Fake, **settings: Any) -> tuple[Batcher, Metrics]:
    settings = {"max_batch_size": 4, "max_wait_ms": 0, "max_queue": 64, **settings}
    metrics = Metrics(max_batch_size=settings["max_batch_size"])
    batcher = Batcher("m", fake, metrics.for_model("m"), **settings)
    batcher.start()
    return batcher, metrics


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, {"model": "m", "version": "", **labels})
    return 0.0 if value is None else value


async def entered(fake: Fake) -> None:
    """Wait (without blocking the loop) until the executor is inside predict."""
    await asyncio.to_thread(fake.entered.wait, 10)


@run
async def test_full_batch_goes_when_max_batch_size_rows_are_queued() -> None:
    fake = Fake()
    batcher, metrics = make(fake, max_batch_size=4, max_wait_ms=10_000)
    results = await asyncio.gather(*(batcher.infer([i], timeout_s=5) for i in range(4)))
    assert results == [[0], [2], [4], [6]]
    assert fake.batches == [[0, 1, 2, 3]]
    assert sample(metrics, "batchserve_dispatch_total", trigger="full") == 1
    await batcher.close(1)


@run
async def test_partial_batch_goes_when_the_oldest_row_has_waited_max_wait() -> None:
    fake = Fake()
    batcher, metrics = make(fake, max_batch_size=8, max_wait_ms=50)
    results = await asyncio.gather(*(batcher.infer([i], timeout_s=5) for i in range(3)))
    assert results == [[0], [2], [4]]
    assert fake.batches == [[0, 1, 2]]
    assert sample(metrics, "batchserve_dispatch_total", trigger="timer") == 1
    await batcher.close(1)


@run
async def test_a_partial_batch_leaves_about_max_wait_after_its_oldest_row() -> None:
    # Timed by the batcher's own queue-wait histogram (admission to dispatch), with bounds a busy
    # machine keeps: at least max_wait (it waited for company), at most 10x it (the timer fired).
    max_wait_s = 0.2
    fake = Fake()
    batcher, metrics = make(fake, max_batch_size=8, max_wait_ms=max_wait_s * 1000)
    try:
        calls = asyncio.gather(*(batcher.infer([i], timeout_s=30) for i in range(3)))
        assert await asyncio.wait_for(calls, timeout=10 * max_wait_s) == [[0], [2], [4]]
        assert fake.batches == [[0, 1, 2]]
        assert sample(metrics, "batchserve_dispatch_total", trigger="timer") == 1
        shown = CollectorRegistry()
        shown.register(Histograms(metrics.registry))
        def waited(suffix: str) -> float:
            return shown.get_sample_value(f"batchserve_queue_wait_seconds{suffix}", {"model": "m"}) or 0.0
        assert waited("_count") == 3
        assert 3 * 0.9 * max_wait_s <= waited("_sum") <= 3 * 10 * max_wait_s, waited("_sum")
    finally:
        await batcher.close(1)


@run
async def test_lone_request_on_idle_server_goes_at_once_despite_max_wait() -> None:
    fake = Fake()
    batcher, metrics = make(fake, max_batch_size=8, max_wait_ms=60_000)
    assert await batcher.infer([7], timeout_s=5) == [14]
    assert sample(metrics, "batchserve_dispatch_total", trigger="idle") == 1
    assert sample(metrics, "batchserve_dispatch_total", trigger="timer") == 0
    await batcher.close(1)


@run
async def test_rows_arriving_while_busy_join_the_next_batch() -> None:
    fake = Fake()
    fake.hold()
    batcher, _ = make(fake, max_batch_size=8)
    first = asyncio.ensure_future(batcher.infer([1], timeout_s=5))
    await entered(fake)
    later = [asyncio.ensure_future(batcher.infer([i], timeout_s=5)) for i in (2, 3, 4)]
    await asyncio.sleep(0.01)
    fake.release()
    assert await first == [2]
    assert [await f for f in later] == [[4], [6], [8]]
    assert fake.batches == [[1], [2, 3, 4]]
    await batcher.close(1)


@run
async def test_large_request_is_split_across_batches_and_reassembled_in_order() -> None:
    fake = Fake()
    batcher, metrics = make(fake, max_batch_size=4)
    assert await batcher.infer(list(range(10)), timeout_s=5) == [2 * i for i in range(10)]
    assert [len(b) for b in fake.batches] == [4, 4, 2]
    assert sample(metrics, "batchserve_batch_size_count") == 3
    assert sample(metrics, "batchserve_batch_size_sum") == 10
    await batcher.close(1)


@run
async def test_split_request_shares_batches_with_others_in_arrival_order() -> None:
    fake = Fake()
    fake.hold()
    batcher, _ = make(fake, max_batch_size=4)
    blocker = asyncio.ensure_future(batcher.infer([0], timeout_s=5))
    await entered(fake)
    big = asyncio.ensure_future(batcher.infer([10, 11, 12, 13, 14, 15], timeout_s=5))
    small = asyncio.ensure_future(batcher.infer([20], timeout_s=5))
    await asyncio.sleep(0)
    fake.release()
    await blocker
    assert await big == [20, 22, 24, 26, 28, 30]
    assert await small == [40]
    assert fake.batches[1:] == [[10, 11, 12, 13], [14, 15, 20]]
    await batcher.close(1)


@run
async def test_rows_whose_deadline_passed_are_never_computed() -> None:
    fake = Fake()
    fake.hold()
    batcher, metrics = make(fake)
    try:
        blocker = asyncio.ensure_future(batcher.infer([1], timeout_s=5))
        await entered(fake)
        # The 504 comes at the deadline (50 ms), while the batch ahead is still held: not when it
        # ends (the fake holds it up to 10 s), at the dispatch that would have found it late.
        with pytest.raises(DeadlineExceeded, match="passed before the rows ran"):
            await asyncio.wait_for(batcher.infer([99], timeout_s=0.05), timeout=2.0)
        assert not blocker.done()
        assert batcher.queued_rows == 0
        fake.release()
        assert await blocker == [2]
        assert await batcher.infer([3], timeout_s=5) == [6]
        assert 99 not in fake.rows_seen
        assert sample(metrics, "batchserve_rejected_total", reason="deadline") == 1
    finally:
        fake.release()
        await batcher.close(1)


@run
async def test_rows_of_a_client_that_disconnected_while_queued_are_dropped() -> None:
    fake = Fake()
    fake.hold()
    batcher, metrics = make(fake)
    blocker = asyncio.ensure_future(batcher.infer([1], timeout_s=5))
    await entered(fake)
    gone = asyncio.Event()
    queued = asyncio.ensure_future(batcher.infer([99], timeout_s=5, disconnected=gone.wait))
    await asyncio.sleep(WATCH_AFTER_S * 3)  # the watch is armed after WATCH_AFTER_S
    gone.set()
    with pytest.raises(ClientDisconnected):
        await queued
    fake.release()
    await blocker
    assert await batcher.infer([3], timeout_s=5) == [6]
    assert 99 not in fake.rows_seen
    assert sample(metrics, "batchserve_rejected_total", reason="cancelled") == 1
    await batcher.close(1)


@run
async def test_cancelled_caller_drops_its_queued_rows() -> None:
    fake = Fake()
    fake.hold()
    batcher, _ = make(fake)
    blocker = asyncio.ensure_future(batcher.infer([1], timeout_s=5))
    await entered(fake)
    queued = asyncio.ensure_future(batcher.infer([99], timeout_s=5))
    await asyncio.sleep(0)
    queued.cancel()
    await asyncio.sleep(0)
    assert batcher.queued_rows == 0
    fake.release()
    await blocker
    await batcher.infer([3], timeout_s=5)
    assert 99 not in fake.rows_seen
    await batcher.close(1)


@run
async def test_full_queue_refuses_at_once_with_retry_after() -> None:
    fake = Fake()
    fake.hold()
    batcher, metrics = make(fake, max_queue=2)
    blocker = asyncio.ensure_future(batcher.infer([1], timeout_s=5))
    await entered(fake)
    waiting = asyncio.ensure_future(batcher.infer([2, 3], timeout_s=5))
    await asyncio.sleep(0)
    with pytest.raises(QueueFull) as refused:
        await batcher.infer([4], timeout_s=5)
    assert refused.value.status == 503
    assert refused.value.headers["Retry-After"] == "1"
    assert sample(metrics, "batchserve_rejected_total", reason="queue_full") == 1
    with pytest.raises(InvalidInput, match="at most 2 per request"):
        await batcher.infer([5, 6, 7], timeout_s=5)
    fake.release()
    assert await blocker == [2]
    assert await waiting == [4, 6]
    await batcher.close(1)


@run
async def test_bisection_isolates_a_poisoned_row() -> None:
    def predict(rows: list[Any]) -> list[Any]:
        if "poison" in rows:
            raise InvalidInput("cannot eat poison")
        return [row * 2 for row in rows]

    fake = Fake(predict)
    fake.hold()
    batcher, _ = make(fake, max_batch_size=8)
    blocker = asyncio.ensure_future(batcher.infer([0], timeout_s=5))
    await entered(fake)
    good = [asyncio.ensure_future(batcher.infer([i], timeout_s=5)) for i in range(1, 4)]
    bad = asyncio.ensure_future(batcher.infer([5, "poison"], timeout_s=5))
    more = [asyncio.ensure_future(batcher.infer([i], timeout_s=5)) for i in range(6, 9)]
    await asyncio.sleep(0)
    fake.release()
    await blocker
    assert [await f for f in good + more] == [[2], [4], [6], [12], [14], [16]]
    with pytest.raises(InvalidInput) as failed:
        await bad
    assert failed.value.status == 400
    assert failed.value.message == "item 1: cannot eat poison"
    assert fake.batches[1] == [1, 2, 3, 5, "poison", 6, 7, 8]  # one batch, then bisected
    await batcher.close(1)


@run
async def test_unexpected_backend_error_is_a_500_for_that_row_only() -> None:
    def predict(rows: list[Any]) -> list[Any]:
        if 13 in rows:
            raise ZeroDivisionError("unlucky")
        return [row * 2 for row in rows]

    fake = Fake(predict)
    batcher, _ = make(fake, max_batch_size=8, max_wait_ms=50)
    results = await asyncio.gather(
        *(batcher.infer([i], timeout_s=5) for i in (12, 13, 14)), return_exceptions=True)
    assert results[0] == [24] and results[2] == [28]
    assert isinstance(results[1], BackendError) and results[1].status == 500
    assert "ZeroDivisionError" in results[1].message
    await batcher.close(1)


@run
async def test_wrong_number_of_outputs_fails_the_batch_with_a_clear_message() -> None:
    fake = Fake(lambda rows: [1] * (len(rows) - 1))
    batcher, _ = make(fake)
    with pytest.raises(BackendContractError, match=r"Fake \(model 'm'\) returned 2 outputs for 3 rows"):
        await batcher.infer([1, 2, 3], timeout_s=5)
    await batcher.close(1)


class Meltdown(BaseException):
    """Not an Exception: escapes the backend's error isolation."""


@run
async def test_loop_survives_an_unexpected_exception() -> None:
    calls = 0

    def predict(rows: list[Any]) -> list[Any]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise Meltdown()
        return [row * 2 for row in rows]

    batcher, _ = make(Fake(predict))
    with pytest.raises(BackendError, match="Meltdown"):
        await batcher.infer([1], timeout_s=5)
    assert await batcher.infer([2], timeout_s=5) == [4]
    assert batcher.broken is None
    await batcher.close(1)


@run
async def test_a_dead_loop_is_reported_and_fails_its_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = Fake()
    batcher, _ = make(fake)

    def explode(self: Batcher) -> None:
        raise Meltdown()

    monkeypatch.setattr(batcher_module.Batcher, "_take", explode)
    with pytest.raises(BackendError, match="broken"):
        await batcher.infer([1], timeout_s=5)
    assert batcher.broken is not None and "Meltdown" in batcher.broken
    await batcher.close(1)


@run
async def test_close_drains_queued_and_running_batches_then_refuses() -> None:
    fake = Fake()
    fake.hold()
    batcher, metrics = make(fake, max_batch_size=2)
    futures = [asyncio.ensure_future(batcher.infer([i], timeout_s=5)) for i in range(5)]
    await entered(fake)
    closing = asyncio.ensure_future(batcher.close(5))
    await asyncio.sleep(0.01)
    with pytest.raises(ShuttingDown):
        await batcher.infer([9], timeout_s=5)
    fake.release()
    await closing
    assert [await f for f in futures] == [[0], [2], [4], [6], [8]]
    assert sample(metrics, "batchserve_rejected_total", reason="shutdown") == 1


@run
async def test_close_fails_what_the_grace_period_could_not_finish() -> None:
    fake = Fake()
    fake.hold()
    batcher, _ = make(fake, max_batch_size=1)
    futures = [asyncio.ensure_future(batcher.infer([i], timeout_s=5)) for i in range(3)]
    await entered(fake)
    await batcher.close(0.05)
    fake.release()
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert all(isinstance(r, ShuttingDown) for r in results)


@run
async def test_instances_run_batches_concurrently() -> None:
    both_in = threading.Barrier(2, timeout=5)

    def predict(rows: list[Any]) -> list[Any]:
        both_in.wait()  # deadlocks unless two batches run at once
        return [row * 2 for row in rows]

    batcher, _ = make(Fake(predict), max_batch_size=1, instances=2)
    results = await asyncio.gather(batcher.infer([1], timeout_s=5), batcher.infer([2], timeout_s=5))
    assert list(results) == [[2], [4]]
    await batcher.close(1)


@run
async def test_rows_that_cannot_finish_before_their_deadline_are_not_started() -> None:
    fake = Fake()
    batcher, metrics = make(fake)
    batcher.load.batch_s = 1.0  # as if recent batches took a second each
    started = asyncio.get_running_loop().time()
    with pytest.raises(DeadlineExceeded, match="would pass before a batch could finish"):
        await batcher.infer([99], timeout_s=0.5)
    assert asyncio.get_running_loop().time() - started < 0.4  # refused at once, not at the deadline
    assert await batcher.infer([3], timeout_s=5) == [6]
    assert 99 not in fake.rows_seen
    assert sample(metrics, "batchserve_rejected_total", reason="deadline") == 1
    await batcher.close(1)


@run
async def test_every_request_leaves_the_watch_by_itself_however_it_ends() -> None:
    fake = Fake()
    batcher, _ = make(fake)
    assert await batcher.infer([1, 2], timeout_s=5) == [2, 4]  # answered
    assert batcher.watched == 0
    fake.hold()
    running = asyncio.ensure_future(batcher.infer([3], timeout_s=5))
    await entered(fake)
    with pytest.raises(DeadlineExceeded):  # expired while queued behind the held batch
        await batcher.infer([4], timeout_s=0.05)
    abandoned = batcher.admit([5], timeout_s=5)
    batcher.abandon(abandoned, ClientDisconnected("gone"))
    with pytest.raises(ClientDisconnected):
        await batcher.wait(abandoned)
    assert batcher.watched == 1  # only the request whose batch runs
    fake.release()
    assert await running == [6]
    assert batcher.watched == 0
    await batcher.close(1)
