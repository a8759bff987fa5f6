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
import random
import time
from array import array
from collections import deque
from collections.abc import Callable, MutableSequence
from dataclasses import dataclass, field
from typing import Any, Literal

from server.planning.client import STATUS_CONNECTION_ERROR, STATUS_TIMEOUT, Connection, connect

TICK_S = 0.02
"""How often a worker checks its stop condition, timeouts and progress."""


@dataclass(frozen=True)
class LoadSpec:
    """What load to generate against which server."""

    host: str
    port: int
    requests: tuple[bytes, ...]
    """Pre-built HTTP requests (``client.build_request``), sent in turn."""
    mode: Literal["closed", "open"] = "closed"
    concurrency: int = 1
    """Closed loop: concurrent clients. Open loop: most connections in use at once."""
    rate: float = 0.0
    """Open loop: mean arrivals per second."""
    duration_s: float | None = 10.0
    count: int | None = None
    """Measure this many requests instead of a duration."""
    warmup_s: float = 1.0
    timeout_s: float = 30.0
    min_responses: int = 0
    """Measure past ``duration_s`` until this many responses arrived..."""
    max_duration_s: float | None = None
    """... but no longer than this."""
    seed: int = 0


@dataclass
class Records:
    """Every request one worker made: times are ``time.monotonic()`` seconds."""

    intended: array[float] = field(default_factory=lambda: array("d"))
    sent: array[float] = field(default_factory=lambda: array("d"))
    end: array[float] = field(default_factory=lambda: array("d"))
    status: array[int] = field(default_factory=lambda: array("H"))
    error_examples: dict[int, bytes] = field(default_factory=dict)
    max_backlog: int = 0

    def add(self, intended: float, sent: float, end: float, status: int) -> None:
        self.intended.append(intended)
        self.sent.append(sent)
        self.end.append(end)
        self.status.append(status)

    def extend(self, other: Records) -> None:
        for mine, theirs in ((self.intended, other.intended), (self.sent, other.sent),
                             (self.end, other.end)):
            mine.extend(theirs)
        self.status.extend(other.status)
        for status, body in other.error_examples.items():
            self.error_examples.setdefault(status, body)
        self.max_backlog = max(self.max_backlog, other.max_backlog)


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

# Shared slots: start time, stop time, then per worker: responses and errors while measuring.
_START, _STOP, _PER_WORKER = 0, 1, 2


class _Worker:
    def __init__(self, spec: LoadSpec, index: int, processes: int, shared: MutableSequence[float]) -> None:
        self.spec = spec
        self.index = index
        self.processes = processes
        self.shared = shared
        self.records = Records()
        self.connections = _share(spec.concurrency, index, processes)
        self.count = None if spec.count is None else _share(spec.count, index, processes)
        self.rate = spec.rate / processes
        self.rng = random.Random(spec.seed * 1000 + index)
        self.next_request = index * 7919
        self.measure_start = 0.0
        self.sent_measured = 0
        self.arrived_measured = 0
        self.stopping = False
        self.live: list[Connection] = []
        self.idle: list[Connection] = []
        self.backlog: deque[float] = deque()
        self.pending: set[asyncio.Task[None]] = set()
        self._published = 0

    # -- lifecycle -----------------------------------------------------------------------------

    async def run(self, ready: Callable[[], None], wait_go: Callable[[], Any]) -> Records:
        self.live = list(await asyncio.gather(*(self._connect() for _ in range(self.connections))))
        ready()
        await wait_go()
        start_at = self.shared[_START]
        self.measure_start = start_at + self.spec.warmup_s
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        if self.spec.mode == "closed":
            now = time.monotonic()
            for connection in self.live:
                self._send(connection, now)
        else:
            self.idle = list(self.live)
            self._spawn(self._arrivals())
        while not self.stopping:
            await asyncio.sleep(TICK_S)
            self._tick()
        deadline = time.monotonic() + self.spec.timeout_s + 2 * TICK_S
        while (self.backlog or any(c.busy for c in self.live)) and time.monotonic() < deadline:
            await asyncio.sleep(TICK_S)
            self._tick()
        now = time.monotonic()
        while self.backlog:  # arrivals that never found a free connection before the end
            self.records.add(self.backlog.popleft(), now, now, STATUS_TIMEOUT)
        for task in list(self.pending):
            task.cancel()
        for connection in self.live:
            connection.close()
        return self.records

    def _tick(self) -> None:
        now = time.monotonic()
        for connection in self.live:
            if connection.busy and now - connection.sent_at > self.spec.timeout_s:
                connection.timeout()
        self._publish()
        if self.stopping:
            return
        stop_at = self.shared[_STOP]
        if stop_at > 0 and now >= stop_at:
            self.stopping = True
        elif self.count is None and self._duration_reached(now):
            self.shared[_STOP] = now
            self.stopping = True
        elif self.count is not None and max(self.sent_measured, self.arrived_measured) >= self.count:
            self.stopping = True

    def _duration_reached(self, now: float) -> bool:
        spec = self.spec
        elapsed = now - self.measure_start
        if spec.duration_s is None or elapsed < spec.duration_s:
            return False
        if spec.max_duration_s is not None and elapsed >= spec.max_duration_s:
            return True
        responses = sum(self.shared[_PER_WORKER + 2 * k] for k in range(self.processes))
        return responses >= spec.min_responses

    def _publish(self) -> None:
        """Responses and errors to requests sent while measuring, for progress and stopping."""
        records, start = self.records, self.measure_start
        responses = errors = 0
        intended, status = records.intended, records.status
        for n in range(self._published, len(intended)):
            if intended[n] >= start:
                responses += 1
                errors += not 200 <= status[n] < 300
        self._published = len(intended)
        self.shared[_PER_WORKER + 2 * self.index] += responses
        self.shared[_PER_WORKER + 2 * self.index + 1] += errors

    # -- sending ---------------------------------------------------------------------------------

    def _take_request(self) -> bytes:
        request = self.spec.requests[self.next_request % len(self.spec.requests)]
        self.next_request += 1
        return request

    def _send(self, connection: Connection, intended: float) -> None:
        now = time.monotonic()
        if intended >= self.measure_start:
            self.sent_measured += 1
        connection.send(self._take_request(), now, intended)

    def _done(self, connection: Connection, status: int, body: bytes) -> None:
        self.records.add(connection.intended_at, connection.sent_at, time.monotonic(), status)
        if body and status not in self.records.error_examples:
            self.records.error_examples[status] = body
        if connection.closed:
            self._spawn(self._replace(connection))
        elif self.spec.mode == "closed":
            if not self.stopping and (self.count is None or self.sent_measured < self.count):
                self._send(connection, time.monotonic())
        elif self.backlog:
            self._send(connection, self.backlog.popleft())
        else:
            self.idle.append(connection)

    async def _replace(self, dead: Connection) -> None:
        """A closed connection is reopened (every 50 ms while the server refuses)."""
        while not self.stopping:
            attempt = time.monotonic()
            try:
                fresh = await self._connect()
            except OSError:
                self.records.add(attempt, attempt, time.monotonic(), STATUS_CONNECTION_ERROR)
                await asyncio.sleep(0.05)
                continue
            self.live[self.live.index(dead)] = fresh
            if self.spec.mode == "closed":
                self._send(fresh, time.monotonic())
            elif self.backlog:
                self._send(fresh, self.backlog.popleft())
            else:
                self.idle.append(fresh)
            return

    async def _connect(self) -> Connection:
        return await connect(self.spec.host, self.spec.port, self._done)

    async def _arrivals(self) -> None:
        """Open loop: Poisson arrivals; due ones go out in a burst after each timer wake-up."""
        arrival = self.shared[_START] + self.rng.expovariate(self.rate)
        while not self.stopping:
            if self.count is not None and self.arrived_measured >= self.count:
                return
            now = time.monotonic()
            if arrival > now:
                await asyncio.sleep(arrival - now)
                continue
            if arrival >= self.measure_start:
                self.arrived_measured += 1
            if self.idle:
                self._send(self.idle.pop(), arrival)
            else:
                self.backlog.append(arrival)
                self.records.max_backlog = max(self.records.max_backlog, len(self.backlog))
            arrival += self.rng.expovariate(self.rate)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)


def _share(total: int, index: int, parts: int) -> int:
    return total // parts + (1 if index < total % parts else 0)


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

    shared = [0.0] * (_PER_WORKER + 2)
    worker = _Worker(spec, 0, 1, shared)

    async def main() -> Records:
        hooked: list[asyncio.Future[object]] = []

        async def call_hook() -> object:
            await asyncio.sleep(max(0.0, shared[_START] + spec.warmup_s - time.monotonic()))
            return await asyncio.get_running_loop().run_in_executor(None, hook)

        async def go() -> None:
            shared[_START] = time.monotonic() + 0.02
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
    return Run(spec, records, worker.measure_start, shared[_STOP], 1)


async def _report(shared: MutableSequence[float], spec: LoadSpec, processes: int,
                  on_progress: ProgressCallback) -> None:
    while True:
        await asyncio.sleep(0.1)
        on_progress(_progress(shared, spec, processes))


def _progress(shared: MutableSequence[float], spec: LoadSpec, processes: int) -> Progress:
    start = shared[_START]
    if start == 0:
        return Progress("warmup", -spec.warmup_s, 0, 0)
    now = time.monotonic()
    elapsed = now - start - spec.warmup_s
    stop = shared[_STOP]
    phase: Literal["warmup", "measure", "drain"] = (
        "warmup" if elapsed < 0 else "drain" if 0 < stop <= now else "measure")
    responses = sum(shared[_PER_WORKER + 2 * k] for k in range(processes))
    errors = sum(shared[_PER_WORKER + 2 * k + 1] for k in range(processes))
    return Progress(phase, elapsed, int(responses), int(errors))


def _run_processes(spec: LoadSpec, processes: int, on_progress: ProgressCallback | None,
                   hook: Callable[[], object], cpus: set[int] | None) -> Run:
    import multiprocessing
    import queue

    # spawn, not fork: the caller may have threads (a progress display).
    context = multiprocessing.get_context("spawn")
    shared = context.RawArray("d", _PER_WORKER + 2 * processes)
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
        shared[_START] = time.monotonic() + 0.05
        measure_start = shared[_START] + spec.warmup_s
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
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
    if not hooked:
        hook()
    merged = Records()
    for index in range(processes):
        merged.extend(collected[index])
    return Run(spec, merged, shared[_START] + spec.warmup_s, shared[_STOP], processes)


def _worker_main(spec: LoadSpec, index: int, processes: int, shared: MutableSequence[float],
                 ready: Any, go: Any, results: Any, cpus: set[int] | None) -> None:
    import uvloop

    if cpus:
        os.sched_setaffinity(0, cpus)
    worker = _Worker(spec, index, processes, shared)

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
