"""One load generator's event loop: its connections, its share of the load, its records.

Closed loop: a connection sends its next request from the callback that delivers
the previous answer (no task per request). Open loop: a task draws Poisson arrivals
and hands each to an idle connection, or queues it in a backlog that connections
drain as they come free. Every few milliseconds a tick times out stuck requests,
publishes progress into shared memory and decides whether to stop.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable, MutableSequence
from typing import Any, cast

from batchserve_planning.load.client import STATUS_CONNECTION_ERROR, STATUS_TIMEOUT, Connection, connect
from batchserve_planning.load.shared import (
    START,
    STOP,
    TICK_S,
    LoadSpec,
    Records,
    errors_slot,
    responses_slot,
    total_responses,
)

EARLY_S = 0.0005
"""Open loop: an arrival this close is sent at once. Event-loop timers have 1 ms
resolution; sleeping for less would spin the CPU the server may need."""


class Worker:
    """Worker ``index`` of ``processes``; ``shared`` holds the slots of ``shared``."""

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
        self.failure: BaseException | None = None
        """What a background task (the arrivals, a reconnection) raised: the run stops and raises it,
        rather than going on with no arrivals and reporting a lower rate than was asked for."""
        self._published = 0

    # -- lifecycle -----------------------------------------------------------------------------

    async def run(self, ready: Callable[[], None], wait_go: Callable[[], Any]) -> Records:
        self.live = list(await asyncio.gather(*(self._connect() for _ in range(self.connections))))
        ready()
        await wait_go()
        start_at = self.shared[START]
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
        if self.failure is not None:
            raise self.failure
        return self.records

    def _tick(self) -> None:
        now = time.monotonic()
        for connection in self.live:
            if connection.busy and now - connection.sent_at > self.spec.timeout_s:
                connection.timeout()
        self._publish()
        if self.stopping:
            return
        stop_at = self.shared[STOP]
        if stop_at > 0 and now >= stop_at:
            self.stopping = True
        elif self.count is None and self._duration_reached(now):
            self.shared[STOP] = now
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
        return total_responses(self.shared, self.processes) >= spec.min_responses

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
        self.shared[responses_slot(self.index)] += responses
        self.shared[errors_slot(self.index)] += errors

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
            if self._closed_loop_goes_on():
                self._send(connection, time.monotonic())
        elif self.backlog:
            self._send(connection, self.backlog.popleft())
        else:
            self.idle.append(connection)

    async def _replace(self, dead: Connection) -> None:
        """A closed connection is reopened (every 50 ms while the server refuses), also after the
        run stopped while arrivals wait for it (they arrived while measuring: they are sent)."""
        while not self.stopping or self.backlog:
            attempt = time.monotonic()
            try:
                fresh = await self._connect()
            except OSError:
                self.records.add(attempt, attempt, time.monotonic(), STATUS_CONNECTION_ERROR)
                await asyncio.sleep(0.05)
                continue
            self.live[self.live.index(dead)] = fresh
            if self.spec.mode == "closed":
                if self._closed_loop_goes_on():
                    self._send(fresh, time.monotonic())
            elif self.backlog:
                self._send(fresh, self.backlog.popleft())
            else:
                self.idle.append(fresh)
            return

    def _closed_loop_goes_on(self) -> bool:
        return not self.stopping and (self.count is None or self.sent_measured < self.count)

    async def _connect(self) -> Connection:
        if self.spec.protocol == "grpc":
            from batchserve_planning.load.grpc_client import grpc_connect

            # a GrpcConnection has Connection's interface (busy, sent_at, send, timeout, close)
            return cast(Connection, await grpc_connect(self.spec.host, self.spec.port, self._done))
        return await connect(self.spec.host, self.spec.port, self._done)

    async def _arrivals(self) -> None:
        """Open loop: Poisson arrivals; the ones due go out together after each timer wake-up."""
        arrival = self.shared[START] + self.rng.expovariate(self.rate)
        while not self.stopping:
            if self.count is not None and self.arrived_measured >= self.count:
                return
            now = time.monotonic()
            if arrival > now + EARLY_S:
                await asyncio.sleep(arrival - now)
                continue
            if arrival >= self.measure_start:
                self.arrived_measured += 1
            intended = min(arrival, now)  # sent early: latency counts from the send
            connection = self._idle_connection()
            if connection is not None:
                self._send(connection, intended)
            else:
                self.backlog.append(intended)
                self.records.max_backlog = max(self.records.max_backlog, len(self.backlog))
            arrival += self.rng.expovariate(self.rate)

    def _idle_connection(self) -> Connection | None:
        """The idle connection used last, skipping those the server closed while they waited (a
        keep-alive timeout: batchserve closes one after 5 s idle, and at a few arrivals a second
        most of an open loop's connections wait that long): each is replaced in the background and
        takes the backlog's next arrival once open. None: no idle connection is open."""
        while self.idle:
            connection = self.idle.pop()
            if not connection.closed:
                return connection
            self._spawn(self._replace(connection))
        return None

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self.pending.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.pending.discard(task)
        if not task.cancelled() and task.exception() is not None and self.failure is None:
            self.failure = task.exception()
            self.stopping = True


def _share(total: int, index: int, parts: int) -> int:
    return total // parts + (1 if index < total % parts else 0)
