"""The load generator: closed loop (N clients) or open loop (Poisson arrivals), in 1+ processes.

Closed loop: each of ``concurrency`` connections sends its next request as soon as
the previous one is answered. Open loop: requests arrive as a Poisson process at
``rate`` per second whether or not earlier ones were answered, over at most
``concurrency`` connections; an arrival that finds them all busy waits in a
client-side backlog, and its latency counts from its arrival time, so a slow
server cannot hide its queueing by slowing the generator (coordinated omission).

A run warms up for ``warmup_s``, then measures for ``duration_s`` (or until
``count`` requests), optionally longer until ``min_responses`` answers arrived
(at most ``max_duration_s``). With several processes the connections (closed) or
the rate (open: a sum of Poisson processes is Poisson) are split between them;
they start together on a shared clock and agree on the stop time through shared
memory. Every request is recorded (arrival, send, answer, status); ``results``
turns the records into figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, MutableSequence
from dataclasses import dataclass
from typing import Any, Literal

from batchserve_planning.load.shared import (
    START,
    STOP,
    LoadSpec,
    Records,
    slot_count,
    total_errors,
    total_responses,
)
from batchserve_planning.load.worker import Worker

__all__ = ["LoadSpec", "Progress", "ProgressCallback", "Records", "Run", "run_load"]


@dataclass(frozen=True)
class Run:
    """The merged records of a run and its clock: measuring began at ``measure_start``."""

    spec: LoadSpec
    records: Records
    measure_start: float
    stop_at: float
    """When sending stopped (duration runs); 0 for count runs."""
    processes: int


@dataclass(frozen=True)
class Progress:
    phase: Literal["warmup", "measure", "drain"]
    elapsed_s: float
    """Seconds since measuring began (negative while warming up)."""
    responses: int
    """Responses to requests sent while measuring."""
    errors: int


ProgressCallback = Callable[[Progress], None]

def run_load(spec: LoadSpec, *, processes: int = 1, on_progress: ProgressCallback | None = None,
             on_measure_start: Callable[[], object] | None = None, cpus: set[int] | None = None) -> Run:
    """Generate the load of ``spec`` and return every request's record.

    ``processes > 1`` runs that many worker processes, ``processes == 1`` runs in this
    process; ``cpus``: the cores the load may use. ``on_measure_start`` is called (on
    another thread, or while workers run) when the warm-up ends: to read ``/metrics``.
    """
    _check(spec, processes)
    hook = on_measure_start or (lambda: None)
    if processes == 1:
        return _run_here(spec, on_progress, hook, cpus)
    return _run_processes(spec, processes, on_progress, hook, cpus)


def _check(spec: LoadSpec, processes: int) -> None:
    if not spec.requests:
        raise ValueError("no requests to send")
    if processes < 1 or spec.concurrency < processes:
        raise ValueError(f"need at least one connection per process ({spec.concurrency} connections, "
                         f"{processes} processes)")
    if spec.mode == "open" and spec.rate <= 0:
        raise ValueError("open loop needs a rate > 0")
    if (spec.duration_s is None) == (spec.count is None):
        raise ValueError("give a duration or a request count, not both")


def _run_here(spec: LoadSpec, on_progress: ProgressCallback | None, hook: Callable[[], object],
              cpus: set[int] | None) -> Run:
    import uvloop

    shared = [0.0] * slot_count(1)
    worker = Worker(spec, 0, 1, shared)

    async def main() -> Records:
        hooked: list[asyncio.Future[object]] = []

        async def call_hook() -> object:
            await asyncio.sleep(max(0.0, shared[START] + spec.warmup_s - time.monotonic()))
            return await asyncio.get_running_loop().run_in_executor(None, hook)

        async def go() -> None:
            shared[START] = time.monotonic() + 0.02
            hooked.append(asyncio.ensure_future(call_hook()))

        reporter = asyncio.ensure_future(_report(shared, spec, 1, on_progress)) if on_progress else None
        try:
            records = await worker.run(lambda: None, go)
            await hooked[0]
            return records
        finally:
            if reporter is not None:
                reporter.cancel()

    previous = os.sched_getaffinity(0) if cpus else None
    if cpus:
        os.sched_setaffinity(0, cpus)
    try:
        records = uvloop.run(main())
    finally:
        if previous:
            os.sched_setaffinity(0, previous)
    return Run(spec, records, worker.measure_start, shared[STOP], 1)


async def _report(shared: MutableSequence[float], spec: LoadSpec, processes: int,
                  on_progress: ProgressCallback) -> None:
    while True:
        await asyncio.sleep(0.1)
        on_progress(_progress(shared, spec, processes))


def _progress(shared: MutableSequence[float], spec: LoadSpec, processes: int) -> Progress:
    start = shared[START]
    if start == 0:
        return Progress("warmup", -spec.warmup_s, 0, 0)
    now = time.monotonic()
    elapsed = now - start - spec.warmup_s
    stop = shared[STOP]
    phase: Literal["warmup", "measure", "drain"] = (
        "warmup" if elapsed < 0 else "drain" if 0 < stop <= now else "measure")
    return Progress(phase, elapsed, int(total_responses(shared, processes)),
                    int(total_errors(shared, processes)))


def _run_processes(spec: LoadSpec, processes: int, on_progress: ProgressCallback | None,
                   hook: Callable[[], object], cpus: set[int] | None) -> Run:
    import multiprocessing
    import queue

    # spawn, not fork: the caller may have threads (a progress display).
    context = multiprocessing.get_context("spawn")
    shared = context.RawArray("d", slot_count(processes))
    ready: multiprocessing.Queue[int] = context.Queue()
    results: multiprocessing.Queue[tuple[int, Records | str]] = context.Queue()
    go = context.Event()
    workers = [context.Process(target=_worker_main, daemon=True,
                               args=(spec, k, processes, shared, ready, go, results, cpus))
               for k in range(processes)]
    for process in workers:
        process.start()
    collected: dict[int, Records] = {}
    try:
        for _ in range(processes):
            ready.get(timeout=60)
        shared[START] = time.monotonic() + 0.05
        measure_start = shared[START] + spec.warmup_s
        go.set()
        hooked = False
        while len(collected) < processes:
            if not hooked and time.monotonic() >= measure_start:
                hook()
                hooked = True
            wait_s = 0.1 if hooked else min(0.1, max(0.001, measure_start - time.monotonic()))
            try:
                index, outcome = results.get(timeout=wait_s)
            except queue.Empty:
                if on_progress is not None:
                    on_progress(_progress(shared, spec, processes))
                if any(p.exitcode not in (None, 0) for p in workers):
                    raise RuntimeError("a load generator process died") from None
                continue
            if isinstance(outcome, str):
                raise RuntimeError(f"load generator process {index} failed: {outcome}")
            collected[index] = outcome
    finally:
        for process in workers:
            if len(collected) < processes:  # failed or interrupted (Ctrl-C, SIGTERM): stop them now
                process.terminate()
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
    if not hooked:
        hook()
    merged = Records()
    for index in range(processes):
        merged.extend(collected[index])
    return Run(spec, merged, shared[START] + spec.warmup_s, shared[STOP], processes)


def _worker_main(spec: LoadSpec, index: int, processes: int, shared: MutableSequence[float],
                 ready: Any, go: Any, results: Any, cpus: set[int] | None) -> None:
    import uvloop

    if cpus:
        os.sched_setaffinity(0, cpus)
    worker = Worker(spec, index, processes, shared)

    async def wait_go() -> None:
        while not go.is_set():
            await asyncio.sleep(0.001)

    try:
        records = uvloop.run(worker.run(lambda: ready.put(index), wait_go))
    except Exception as exc:
        with contextlib.suppress(Exception):
            ready.put(index)
        results.put((index, f"{type(exc).__name__}: {exc}"))
        return
    results.put((index, records))
