"""Per-row failure is a value: a ``RowError`` reaches its row's request alone; an error that is
not the rows' fault fails the batch once; bisection is a capped fallback. Fake backends count
their calls."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

import pytest
from batchserve.batcher import Batcher
from batchserve.errors import BackendError, InvalidInput, RowError
from batchserve.execution import bisection_budget
from batchserve.metrics import Metrics


class Counting:
    """A backend: ``fn`` per call, every call recorded; ``hold`` keeps the first call waiting."""

    def __init__(self, fn: Callable[[list[Any]], list[Any]]) -> None:
        self.fn = fn
        self.calls: list[list[Any]] = []
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, rows: list[Any]) -> list[Any]:
        self.calls.append(list(rows))
        self.entered.set()
        self.gate.wait(10)
        return self.fn(rows)


def make(backend: Counting, **settings: Any) -> Batcher:
    settings = {"max_batch_size": 8, "max_wait_ms": 0, "max_queue": 64, **settings}
    batcher = Batcher("m", backend, Metrics(max_batch_size=8).for_model("m"), **settings)
    batcher.start()
    return batcher


async def batched(batcher: Batcher, backend: Counting, requests: list[list[Any]]) -> list[Any]:
    """Run ``requests`` together in one batch (behind a held one), outcomes in order."""
    backend.gate.clear()
    blocker = asyncio.ensure_future(batcher.infer([0], timeout_s=5))
    await asyncio.to_thread(backend.entered.wait, 10)
    futures = [asyncio.ensure_future(batcher.infer(rows, timeout_s=5)) for rows in requests]
    await asyncio.sleep(0)
    backend.gate.set()
    await asyncio.gather(blocker, return_exceptions=True)
    backend.calls.pop(0)
    return list(await asyncio.gather(*futures, return_exceptions=True))


def run(coroutine: Any) -> None:
    asyncio.run(asyncio.wait_for(coroutine, 30))


def test_a_row_error_fails_its_request_alone_in_one_call() -> None:
    def predict(rows: list[Any]) -> list[Any]:
        return [RowError(InvalidInput("odd one out")) if row == 13 else row * 2 for row in rows]

    async def main() -> None:
        backend = Counting(predict)
        batcher = make(backend)
        results = await batched(batcher, backend, [[1], [2, 13, 3], [4]])
        assert results[0] == [2] and results[2] == [8]
        assert isinstance(results[1], InvalidInput) and results[1].status == 400
        assert results[1].message == "item 1: odd one out"
        assert backend.calls == [[1, 2, 13, 3, 4]]  # one call: nothing bisected
        assert batcher.queued_rows == 0 and batcher.broken is None
        await batcher.close(1)

    run(main())


class OutOfMemoryError(RuntimeError):
    """Named like torch.cuda.OutOfMemoryError, which is recognised by name."""


@pytest.mark.parametrize("error", [
    OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("CUDA error: an illegal memory access was encountered"),
    MemoryError(),
    BackendError("the device went away"),
], ids=["cuda-oom", "lost-device", "memory", "backend-error"])
def test_an_error_that_is_not_the_rows_fault_fails_the_batch_once(
        error: Exception, caplog: pytest.LogCaptureFixture) -> None:
    def predict(rows: list[Any]) -> list[Any]:
        if len(rows) > 1:
            raise error
        return [row * 2 for row in rows]

    async def main() -> None:
        backend = Counting(predict)
        batcher = make(backend)
        caplog.clear()
        results = await batched(batcher, backend, [[i] for i in range(1, 9)])
        assert all(isinstance(r, BackendError) and r.status == 500 for r in results)
        assert len(backend.calls) == 1  # not bisected into 2N - 1 = 15 calls
        errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(errors) == 1
        assert await batcher.infer([5], timeout_s=5) == [10]  # the next batch runs as usual
        await batcher.close(1)

    run(main())


def test_bisection_of_an_unexpected_error_is_capped() -> None:
    def predict(rows: list[Any]) -> list[Any]:
        raise ValueError("every row is bad")

    async def main() -> None:
        backend = Counting(predict)
        batcher = make(backend)
        results = await batched(batcher, backend, [[i] for i in range(1, 9)])
        assert all(isinstance(r, BackendError) for r in results)
        assert len(backend.calls) <= 1 + bisection_budget(8)  # uncapped: 2 * 8 - 1 = 15
        assert bisection_budget(8) == 6
        await batcher.close(1)

    run(main())


def test_capped_bisection_still_isolates_one_bad_row() -> None:
    def predict(rows: list[Any]) -> list[Any]:
        if "poison" in rows:
            raise InvalidInput("cannot eat poison")
        return [row * 2 for row in rows]

    async def main() -> None:
        backend = Counting(predict)
        batcher = make(backend, max_batch_size=16)
        requests: list[list[Any]] = [[i] for i in range(15)]
        requests[9] = ["poison"]
        results = await batched(batcher, backend, requests)
        assert isinstance(results[9], InvalidInput) and results[9].message == "item 0: cannot eat poison"
        assert [r for i, r in enumerate(results) if i != 9] == [[2 * i] for i in range(15) if i != 9]
        assert len(backend.calls) <= 1 + bisection_budget(15)
        await batcher.close(1)

    run(main())
