"""The batcher delivers outcomes safely: a caller's state never breaks a worker loop, and a
broken loop shows in liveness (/healthz 503) as well as readiness."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

import pytest
from batchserve.batcher import Batcher
from batchserve.errors import InvalidInput
from batchserve.metrics import Metrics
from fastapi.testclient import TestClient


def make(predict: Any, metrics: Metrics | None = None, **settings: Any) -> Batcher:
    settings = {"max_batch_size": 4, "max_wait_ms": 0, "max_queue": 64, **settings}
    metrics = metrics or Metrics(max_batch_size=4)
    batcher = Batcher("m", predict, metrics.for_model("m"), **settings)
    batcher.start()
    return batcher


class InlineExecutor(Executor):
    """Runs the batch on the loop's own thread, so that the order of the loop's callbacks
    (and with it the race below) does not depend on thread timing."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        future.set_result(fn(*args, **kwargs))
        return future


async def _cancelled_in_the_turn_its_outputs_arrive() -> None:
    loop = asyncio.get_running_loop()
    victim: asyncio.Future[list[Any]] | None = None

    def cancel_victim() -> None:
        assert victim is not None
        victim.cancel()

    def predict(rows: list[Any]) -> list[Any]:
        if "victim" in rows:
            # Two turns on: after the batch's completion callback, which wakes the worker.
            # The worker then resumes with the victim's future cancelled but its task not yet
            # run: the same-turn race of a caller cancelled as its outputs arrive.
            loop.call_soon(loop.call_soon, cancel_victim)
        return [f"{row}!" for row in rows]

    metrics = Metrics(max_batch_size=4)
    batcher = make(predict, metrics=metrics)
    batcher._pool = InlineExecutor()  # type: ignore[assignment]
    victim = asyncio.ensure_future(batcher.infer(["victim"], timeout_s=5))
    with pytest.raises(asyncio.CancelledError):
        await victim
    assert await batcher.infer(["next"], timeout_s=2) == ["next!"]
    assert batcher.broken is None
    assert metrics.registry.get_sample_value(
        "batchserve_rejected_total", {"model": "m", "version": "", "reason": "cancelled"}) == 1
    await batcher.close(1)


def test_a_caller_cancelled_as_its_outputs_arrive_does_not_stop_the_loop() -> None:
    asyncio.run(asyncio.wait_for(_cancelled_in_the_turn_its_outputs_arrive(), 30))


def test_a_broken_batching_loop_fails_liveness_naming_the_model(diabetes_client: TestClient) -> None:
    assert diabetes_client.get("/healthz").status_code == 200
    state = diabetes_client.app.state.batchserve  # type: ignore[attr-defined]
    state.registry.get("echo").batcher.broken = "batching loop stopped: test"
    live = diabetes_client.get("/healthz")
    assert live.status_code == 503
    assert live.json() == {"status": "broken", "models": {"echo": "batching loop stopped: test"}}
    assert diabetes_client.get("/readyz").status_code == 503
    v2_live = diabetes_client.get("/v2/health/live")  # what the KServe runtime probes
    assert v2_live.status_code == 503 and v2_live.json() == {"live": False}


async def _no_rows() -> None:
    batcher = make(lambda rows: [row * 2 for row in rows], max_wait_ms=50)
    with pytest.raises(InvalidInput, match="no items"):
        batcher.check_admission(0)
    empty = asyncio.ensure_future(batcher.infer([], timeout_s=5))
    other = asyncio.ensure_future(batcher.infer([1], timeout_s=5))
    with pytest.raises(InvalidInput, match="no items"):
        await empty
    assert await other == [2]
    assert batcher.queued_rows == 0
    await batcher.close(1)


def test_a_request_of_no_rows_is_refused_at_once() -> None:
    asyncio.run(asyncio.wait_for(_no_rows(), 30))
