"""Cheap batches on the event loop (``Backend.predict_on_loop_when_cheap``): only for a backend
that allows it, one instance, once measured cheap; a batch that held the loop past
``INLINE_LIMIT_S`` sends the next ones to the thread for a while, longer after each strike in a row
for good; and the loop's other work runs between such batches."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from typing import Any

import pytest
from batchserve import load
from batchserve.batcher import Batcher
from batchserve.metrics import Metrics


class Recording:
    """Doubles each row; records on which thread each call ran; calls ``slow_on`` spend 5 ms of CPU."""

    def __init__(self, slow_on: set[int] | None = None) -> None:
        self.threads: list[int] = []
        self.ticks: list[int] = []  # the ticker's count at each call
        self.slow_on = slow_on or set()
        self.ticker = 0

    def __call__(self, rows: list[Any]) -> list[Any]:
        self.threads.append(threading.get_ident())
        self.ticks.append(self.ticker)
        if len(self.threads) in self.slow_on:
            until = time.thread_time() + 0.005
            while time.thread_time() < until:
                pass
        return [row * 2 for row in rows]

    def on_loop(self) -> list[bool]:
        loop_thread = threading.get_ident()
        return [ident == loop_thread for ident in self.threads]


@pytest.fixture(autouse=True)
def everything_cheap(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every measured batch counts as cheap, so that which batches go on the loop does not depend
    on how fast this machine runs the fake; the 1 ms limit stays real."""
    monkeypatch.setattr(load, "INLINE_MAX_S", 1.0)


async def _serve(fake: Recording, requests: int, **settings: Any) -> Batcher:
    settings = {"max_batch_size": 4, "max_wait_ms": 0, "max_queue": 64, **settings}
    batcher = Batcher("m", fake, Metrics(max_batch_size=4).for_model("m"), **settings)
    batcher.start()
    for index in range(requests):  # one at a time: one batch each, all of size class 1
        assert await batcher.infer([index], timeout_s=5) == [2 * index]
    return batcher


def test_cheap_batches_go_on_the_loop_once_measured() -> None:
    async def scenario() -> list[bool]:
        fake = Recording()
        await (await _serve(fake, load.INLINE_AFTER_BATCHES + 3, on_loop_when_cheap=True)).close(1)
        return fake.on_loop()

    after = load.INLINE_AFTER_BATCHES
    assert asyncio.run(scenario()) == [False] * after + [True] * 3


@pytest.mark.parametrize("settings", [{}, {"on_loop_when_cheap": True, "instances": 2}])
def test_batches_stay_on_threads_unless_the_backend_allows_one_instance(settings: dict[str, Any]) -> None:
    async def scenario() -> list[bool]:
        fake = Recording()
        await (await _serve(fake, load.INLINE_AFTER_BATCHES + 3, **settings)).close(1)
        return fake.on_loop()

    assert not any(asyncio.run(scenario()))


def _placements(slow_on: set[int], requests: int) -> list[bool]:
    async def scenario() -> list[bool]:
        fake = Recording(slow_on=slow_on)
        await (await _serve(fake, requests, on_loop_when_cheap=True)).close(1)
        return fake.on_loop()

    return asyncio.run(scenario())


def test_a_batch_that_held_the_loop_too_long_sends_the_next_ones_to_the_thread() -> None:
    after = load.INLINE_AFTER_BATCHES
    placed = _placements({after + 2}, after + 5)  # the second batch on the loop takes 5 ms
    assert placed == [False] * after + [True, True] + [False] * 3


def test_after_each_pause_the_loop_is_tried_again_even_after_many_strikes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(load, "INLINE_PAUSE_BATCHES", 2)
    monkeypatch.setattr(load, "INLINE_MAX_PAUSE_BATCHES", 4)
    after = load.INLINE_AFTER_BATCHES
    # 1st strike: 2 batches on the thread; 2nd: 4; 3rd: 4 (the longest pause), then the loop again
    first = after + 1
    second = first + 2 + 1
    third = second + 4 + 1
    placed = _placements({first, second, third}, third + 6)
    assert placed == ([False] * after + [True] + [False] * 2 + [True] + [False] * 4 + [True]
                      + [False] * 4 + [True] * 2)


def test_the_loop_runs_other_work_between_batches_it_runs() -> None:
    async def scenario() -> Recording:
        fake = Recording()
        batcher = await _serve(fake, load.INLINE_AFTER_BATCHES, on_loop_when_cheap=True,
                               max_batch_size=1)

        async def tick() -> None:
            while True:
                fake.ticker += 1
                await asyncio.sleep(0)

        ticker = asyncio.ensure_future(tick())
        assert await batcher.infer([1, 2, 3, 4], timeout_s=5) == [2, 4, 6, 8]  # 4 batches of 1
        ticker.cancel()
        await batcher.close(1)
        return fake

    fake = asyncio.run(scenario())
    ticks = fake.ticks[-4:]
    assert fake.on_loop()[-4:] == [True] * 4
    assert all(later > earlier for earlier, later in itertools.pairwise(ticks))
