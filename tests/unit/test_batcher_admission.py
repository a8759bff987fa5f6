"""Admission by predicted wait: rows that can't start before their deadline at the model's
recent rate are refused at once (503 overloaded, Retry-After from the estimate), never on a
cold start and never a lone request on an idle server. The fake backend sleeps, so its rate
has a known upper bound; nothing here asserts on elapsed time."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from batchserve.batcher import Batcher
from batchserve.errors import DeadlineExceeded, Overloaded
from batchserve.load import RATE_AFTER_BATCHES
from batchserve.metrics import Metrics

SLEEP_S = 0.05  # each batch sleeps at least this: batches of 4 run at most 80 rows/s


class Slow:
    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.rows_seen: list[Any] = []

    def __call__(self, rows: list[Any]) -> list[Any]:
        self.entered.set()
        self.gate.wait(10)
        time.sleep(SLEEP_S)
        self.rows_seen.extend(rows)
        return [row * 2 for row in rows]


def make(backend: Slow) -> tuple[Batcher, Metrics]:
    metrics = Metrics(max_batch_size=4)
    batcher = Batcher("m", backend, metrics.for_model("m"), max_batch_size=4, max_wait_ms=0,
                      max_queue=1000)
    batcher.start()
    return batcher, metrics


async def measured(backend: Slow) -> tuple[Batcher, Metrics]:
    """A started batcher that has run enough batches to have a rate (``RATE_AFTER_BATCHES``)."""
    batcher, metrics = make(backend)
    for _ in range(RATE_AFTER_BATCHES):  # a rate: <= 80 rows/s
        assert await batcher.infer([1, 2, 3, 4], timeout_s=30) == [2, 4, 6, 8]
    return batcher, metrics


async def hold_and_queue(batcher: Batcher, backend: Slow, rows: int) -> list[asyncio.Future[Any]]:
    """One batch held in the backend, and ``rows`` rows queued behind it."""
    backend.gate.clear()
    backend.entered.clear()
    futures: list[asyncio.Future[Any]] = [asyncio.ensure_future(batcher.infer([-1], timeout_s=60))]
    await asyncio.to_thread(backend.entered.wait, 10)
    futures += [asyncio.ensure_future(batcher.infer([i] * 4, timeout_s=60)) for i in range(rows // 4)]
    await asyncio.sleep(0)
    assert batcher.queued_rows == rows
    return futures


def run(coroutine: Any) -> None:
    asyncio.run(asyncio.wait_for(coroutine, 60))


def rejected(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value("batchserve_rejected_total",
                                              {"model": "m", "version": "", "reason": "overloaded"})
    return value or 0.0


def test_rows_that_cannot_start_before_their_deadline_are_refused_at_once() -> None:
    async def main() -> None:
        backend = Slow()
        batcher, metrics = await measured(backend)
        waiting = await hold_and_queue(batcher, backend, 400)  # >= 5 s of work queued
        wait_s = batcher.predicted_wait_s()
        assert wait_s is not None and wait_s >= 400 / (4 / SLEEP_S)
        with pytest.raises(Overloaded) as refused:
            await batcher.infer([-99], timeout_s=0.1)
        assert refused.value.status == 503 and refused.value.type == "overloaded"
        assert int(refused.value.headers["Retry-After"]) >= 5  # >= 5 s queued, 0.1 s allowed
        with pytest.raises(Overloaded):  # an absolute deadline wins over timeout_s
            await batcher.infer([-98], timeout_s=60, deadline_s=time.monotonic() + 0.1)
        with pytest.raises(Overloaded):  # checked before preprocessing too
            batcher.check_admission(1, time.monotonic() + 0.1)
        assert rejected(metrics) == 3
        assert batcher.queued_rows == 400
        batcher.check_admission(1, time.monotonic() + 3600)  # time enough: admitted
        backend.gate.set()
        await batcher.close(0)  # the queued rows are not needed: fail them
        await asyncio.gather(*waiting, return_exceptions=True)
        assert -99 not in backend.rows_seen and -98 not in backend.rows_seen

    run(main())


def test_no_refusal_on_a_cold_start_or_from_too_few_batches() -> None:
    async def main() -> None:
        backend = Slow()
        batcher, metrics = make(backend)
        for _ in range(RATE_AFTER_BATCHES - 1):  # too few batches to claim a rate from
            await batcher.infer([1, 2, 3, 4], timeout_s=30)
        waiting = await hold_and_queue(batcher, backend, 400)
        assert batcher.predicted_wait_s() is None
        with pytest.raises(DeadlineExceeded):  # admitted; then its deadline passes in the queue
            await batcher.infer([-99], timeout_s=0.1)
        assert rejected(metrics) == 0
        backend.gate.set()
        await batcher.close(0)
        await asyncio.gather(*waiting, return_exceptions=True)

    run(main())


def test_a_lone_request_on_an_idle_server_is_never_refused() -> None:
    async def main() -> None:
        backend = Slow()
        batcher, metrics = await measured(backend)
        assert batcher.predicted_wait_s() == 0.0
        batcher.check_admission(4, time.monotonic() + 1e-6)
        assert await batcher.infer([5], timeout_s=30, deadline_s=time.monotonic() + 30) == [10]
        assert rejected(metrics) == 0
        await batcher.close(1)

    run(main())


def test_rows_that_could_start_but_not_finish_a_batch_in_time_are_refused() -> None:
    async def main() -> None:
        backend = Slow()
        batcher, metrics = await measured(backend)
        waiting = await hold_and_queue(batcher, backend, 8)
        wait_s = batcher.predicted_wait_s()
        assert wait_s is not None and wait_s > 0
        batcher.load.batch_s = 3600.0  # batches take an hour: none can end before the deadline
        with pytest.raises(Overloaded):  # its rows would start well in time, but not finish
            batcher.check_admission(1, time.monotonic() + wait_s + 60)
        assert rejected(metrics) == 1
        batcher.load.batch_s = 0.0
        batcher.check_admission(1, time.monotonic() + wait_s + 60)  # a batch that ends: admitted
        backend.gate.set()
        await batcher.close(0)
        await asyncio.gather(*waiting, return_exceptions=True)

    run(main())
