"""The per-model micro-batcher.

Requests are admitted as *rows* (one per input item) into a FIFO queue. Each of
``instances`` worker tasks forms a batch whenever it is free, from the rows
queued at that moment, and runs the backend's ``predict_batch`` on a dedicated
thread, or where the backend allows it, on the event loop when cheaper than the hop.

When a batch goes (the ``trigger`` label of ``batchserve_dispatch_total``):

- ``full``: ``max_batch_size`` rows are queued;
- ``idle``: a worker is free and no company is expected: ``max_wait_ms`` is 0,
  or the recent mean gap between requests (an exponentially weighted moving
  average) is longer than ``max_wait_ms``, so waiting would only add latency.
  A lone request on an idle server therefore goes at once;
- ``timer``: requests are arriving faster than ``max_wait_ms`` apart, and the
  oldest queued row has waited ``max_wait_ms``.

Rows that arrive while every worker is busy join the next batch, so batches
fill under load even with ``max_wait_ms = 0`` (the default).

Admission refuses at once (503) when closing, when the queue is full, or when what is ahead
(``check_admission``) would not let a request's batch end before its deadline. Running a batch
and its per-row errors: ``execution.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from batchserve.errors import (
    BackendError,
    BatchserveError,
    DeadlineExceeded,
    InvalidInput,
    Overloaded,
    QueueFull,
    ShuttingDown,
)
from batchserve.execution import (
    Batch,
    BatchFailed,
    Disconnected,
    PredictBatch,
    Request,
    deliver,
    run_batch,
    settle,
    timed_run_batch,
)
from batchserve.inflight import InFlight
from batchserve.load import Backlog, RecentLoad
from batchserve.metrics import ModelMetrics

if TYPE_CHECKING:  # imported only when tracing is on (OpenTelemetry is an extra)
    from batchserve.tracing import Tracing

log = logging.getLogger(__name__)


class Batcher:
    """Queues rows for one model and runs them in batches on ``instances`` threads."""

    def __init__(
        self,
        name: str,
        predict_batch: PredictBatch,
        metrics: ModelMetrics,
        *,
        max_batch_size: int,
        max_wait_ms: float,
        max_queue: int,
        instances: int = 1,
        on_loop_when_cheap: bool = False,
        tracing: Tracing | None = None,
        device: str = "cpu",
    ) -> None:
        self.name = name
        self._predict_batch = predict_batch
        self._metrics = metrics
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.instances = instances
        self._queue: deque[Request] = deque()
        self._inflight = InFlight(self._fail)
        self._queued_rows = 0
        self._arrival = asyncio.Event()
        self.load = RecentLoad()
        self._closing = False
        self._workers: list[asyncio.Task[None]] = []
        self._pool: ThreadPoolExecutor | None = None
        # with one instance cheap batches may run on the loop (load.RecentLoad.placement, held_loop)
        self._on_loop_ok = on_loop_when_cheap and instances == 1
        self._tracing, self._device = tracing, device  # for batch spans, when tracing is on
        self.broken: str | None = None
        """Why a worker loop stopped unexpectedly; ``None`` while healthy."""

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker tasks; call from the event loop that will submit rows."""
        self._pool = ThreadPoolExecutor(self.instances, thread_name_prefix=f"batch-{self.name}")
        for index in range(self.instances):
            task = asyncio.create_task(self._worker(), name=f"batcher-{self.name}-{index}")
            task.add_done_callback(self._worker_ended)
            self._workers.append(task)

    async def close(self, grace_s: float) -> None:
        """Refuse new rows, finish queued and running batches within ``grace_s``, then stop."""
        self._closing = True
        self._arrival.set()
        if self._workers:
            _, pending = await asyncio.wait(self._workers, timeout=grace_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        while self._queue:
            self._fail(self._queue.popleft(), ShuttingDown("server stopped before the rows ran"),
                       reason="shutdown")
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def reconfigure(self, *, max_batch_size: int, max_wait_ms: float, max_queue: int) -> None:
        """Apply new limits to a running batcher: they take effect at the next batch formed;
        rows already admitted stay admitted even if ``max_queue`` shrinks below them."""
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self._arrival.set()  # a worker waiting on the old timer re-evaluates

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    @property
    def watched(self) -> int:  # admitted and not yet answered, failed or abandoned
        return len(self._inflight)

    @property
    def closing(self) -> bool:  # close was called: new rows are refused
        return self._closing

    # -- admission -------------------------------------------------------------------------

    async def infer(self, rows: Sequence[Any], *, timeout_s: float, deadline_s: float | None = None,
                    disconnected: Disconnected | None = None) -> list[Any]:
        """Run ``rows`` through the model and return their outputs, in order (``admit``, then
        ``wait``). The deadline is ``deadline_s`` (``time.monotonic()``) when given, else ``timeout_s``
        from now. Raises what ``check_admission`` raises, at once; ``DeadlineExceeded`` when the
        deadline passes first (rows not yet dispatched never run), ``ClientDisconnected`` when the
        awaitable ``disconnected`` makes completes first (watched once the request has waited
        ``inflight.WATCH_AFTER_S``), and the row's error when the backend failed on it."""
        return await self.wait(self.admit(rows, timeout_s=timeout_s, deadline_s=deadline_s,
                                          disconnected=disconnected))

    async def wait(self, request: Request) -> list[Any]:
        """The outputs of an admitted request (its rows are dropped, counted as cancelled, if
        the caller is cancelled first)."""
        try:
            return await request.future
        except asyncio.CancelledError:
            self._fail(request, None, reason="cancelled")
            raise

    def admit(self, rows: Sequence[Any], *, timeout_s: float, deadline_s: float | None = None,
              disconnected: Disconnected | None = None) -> Request:
        """``submit``, with the request's deadline (and client, with ``disconnected``) watched
        until it is answered, failed or abandoned: ``infer`` is this, then ``wait``."""
        request = self.submit(rows, timeout_s=timeout_s, deadline_s=deadline_s)
        self._inflight.enter(request, disconnected)
        return request

    def abandon(self, request: Request, error: BatchserveError) -> None:
        """The request's client went away: rows not yet dispatched never run, and its future
        gets ``error`` (counted in ``batchserve_rejected_total{reason="cancelled"}``)."""
        self._fail(request, error, reason="cancelled")

    def check_admission(self, count: int, deadline_s: float | None = None, *,
                        ahead: Backlog | None = None) -> None:
        """Refuse at once (503) what ``submit`` would refuse: called before preprocessing too,
        so that an overloaded server does not decode inputs only to turn them away.

        With ``deadline_s`` (``time.monotonic()`` clock), a request whose rows could not start
        before it is refused (``Overloaded``) rather than left to wait out its deadline for a
        504: the wait counts the rows queued here, at the model's recent rate, and ``ahead``,
        what is still being preprocessed ahead of the request (``preprocessing.Backlog``)."""
        if self._closing:
            self._metrics.rejected["shutdown"].inc()
            raise ShuttingDown(f"model '{self.name}' is shutting down")
        if count == 0:  # would never be dispatched, and would wait out its deadline
            raise InvalidInput("request has no items; send at least one")
        if count > self.max_queue:
            raise InvalidInput(f"request has {count} items; model '{self.name}' accepts at most "
                               f"{self.max_queue} per request (max_queue)")
        if self._queued_rows + count > self.max_queue:
            self._metrics.rejected["queue_full"].inc()
            raise QueueFull(f"model '{self.name}' has {self._queued_rows} rows queued (max_queue "
                            f"{self.max_queue}); retry later")
        if deadline_s is not None:
            self._check_wait(deadline_s, ahead)

    def predicted_wait_s(self, ahead: Backlog | None = None) -> float | None:
        """Until a request arriving now could have its rows start (``RecentLoad.wait_s``)."""
        return self.load.wait_s(self._queued_rows, self.instances, ahead)

    def _check_wait(self, deadline_s: float, ahead: Backlog | None) -> None:
        wait_s = self.load.wait_s(self._queued_rows, self.instances, ahead)  # predicted_wait_s
        if not wait_s:  # a lone request on an idle server, or no estimate yet: never refused
            return
        left_s = deadline_s - time.monotonic()
        if wait_s + self.load.batch_s < left_s:  # its batch must also end in time (as _take asks)
            return
        self._metrics.rejected["overloaded"].inc()
        preprocessing = f" and {ahead.rows} items being preprocessed" if ahead and ahead.rows else ""
        raise Overloaded(f"model '{self.name}' has {self._queued_rows} rows queued{preprocessing}; at "
                         f"its recent rates this request's rows would start in ~{wait_s:.2f} s and take "
                         f"~{self.load.batch_s:.2f} s, past its deadline ({max(left_s, 0):.2f} s left); "
                         "retry later", retry_after_s=max(1, math.ceil(wait_s - max(left_s, 0))))

    def submit(self, rows: Sequence[Any], *, timeout_s: float,
               deadline_s: float | None = None) -> Request:
        """Admit ``rows`` or refuse at once, as ``check_admission`` does."""
        now = time.monotonic()
        deadline_s = now + timeout_s if deadline_s is None else deadline_s
        self.check_admission(len(rows), deadline_s)
        self.load.arrived(now)
        request = Request(
            rows=rows, deadline_s=deadline_s, enqueued_s=now,
            future=asyncio.get_running_loop().create_future(),
            outputs=[None] * len(rows), unanswered=len(rows),
        )
        self._queue.append(request)
        self._queued_rows += len(rows)
        self._arrival.set()
        return request

    def _fail(self, request: Request, error: BatchserveError | None, *, reason: str | None) -> None:
        """Stop serving ``request``: rows not yet dispatched never run; its caller gets ``error``
        (``None``: the caller is gone). ``reason`` is counted in ``batchserve_rejected_total``."""
        if request.done:
            return
        request.done = True
        self._inflight.leave(request)
        self._unqueue(request)
        if reason is not None:
            self._metrics.rejected[reason].inc()
        if error is None:
            request.future.cancel()
        else:
            settle(request.future, error)

    def _unqueue(self, request: Request) -> None:
        left = len(request.rows) - request.next_row
        if left:
            request.next_row = len(request.rows)
            self._queued_rows -= left

    # -- batch formation -------------------------------------------------------------------

    async def _next_batch(self) -> tuple[Batch, str] | None:
        """Wait until a batch should go, then take it; ``None`` once closed and empty."""
        while True:
            self._drop_dead_head()
            if not self._queue:
                if self._closing:
                    return None
                self._arrival.clear()
                await self._arrival.wait()
                continue
            if self._queued_rows >= self.max_batch_size:
                trigger = "full"
            elif self.max_wait_s <= 0 or self._closing or not self.load.company_expected(self.max_wait_s):
                trigger = "idle"
            else:
                left_s = self._queue[0].enqueued_s + self.max_wait_s - time.monotonic()
                if left_s > 0:
                    self._arrival.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._arrival.wait(), left_s)
                    continue
                trigger = "timer"
            batch = self._take()
            if batch.rows:
                return batch, trigger

    def _drop_dead_head(self) -> None:
        while self._queue and self._queue[0].done:
            self._queue.popleft()

    def _take(self) -> Batch:
        now = time.monotonic()
        batch = Batch(taken_s=now)
        queue_wait = self._metrics.queue_wait
        while self._queue and len(batch.rows) < self.max_batch_size:
            request = self._queue[0]
            if request.done:
                self._queue.popleft()
                continue
            if now + self.load.batch_s >= request.deadline_s:
                # Past its deadline, or would pass it while the batch runs: computing it would
                # only take the executor from requests that can still be answered in time.
                self._queue.popleft()
                self._fail(request, DeadlineExceeded(
                    "deadline passed, or would pass before a batch could finish "
                    f"(batches take ~{self.load.batch_s * 1000:.0f} ms), before the rows ran"),
                    reason="deadline")
                continue
            start = request.next_row
            stop = min(len(request.rows), start + self.max_batch_size - len(batch.rows))
            if start == 0:
                request.dispatched_s = now
                queue_wait.observe(now - request.enqueued_s)
            batch.rows.extend(request.rows[start:stop])
            batch.slices.append((request, start, stop))
            request.next_row = stop
            self._queued_rows -= stop - start
            if stop == len(request.rows):
                self._queue.popleft()
        queue_wait.flush()
        return batch

    # -- execution -------------------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            taken = await self._next_batch()
            if taken is None:
                return
            batch, trigger = taken
            self._metrics.dispatch[trigger].inc()
            self._metrics.batch_size.observe(len(batch.rows))
            place, why = self.load.placement(len(batch.rows)) if self._on_loop_ok else ("thread", "backend")
            self._metrics.placement[place, why].inc()
            inline = place == "loop"
            if (ran := await self._compute(batch, inline)) is None:
                continue
            outcomes, computed_s = ran
            self.load.computed(len(batch.rows), computed_s, on_loop=inline)
            ended_s = time.monotonic()
            if self._tracing is not None:
                self._tracing.batch(batch, self.name, trigger, place, self._device, ended_s)
            deliver(batch, outcomes, self._fail, self._inflight.leave, self.name, ended_s)
            if inline and self._queue:
                await asyncio.sleep(0)  # the loop's other work, between batches held on it

    async def _compute(self, batch: Batch, inline: bool) -> tuple[list[Any], float] | None:
        """``batch``'s outcomes and predict_batch's CPU seconds, on the loop (``inline``) or the
        model's thread; ``None`` when the batch failed as a whole (its requests with it)."""
        started, cpu_started, computed_s = time.perf_counter(), time.thread_time(), 0.0
        try:
            if inline:  # cheaper than the hop to the model's thread (load.INLINE_MAX_S)
                outcomes = run_batch(self._predict_batch, batch.rows, self.name)
            else:
                outcomes, computed_s = await asyncio.get_running_loop().run_in_executor(
                    self._pool, timed_run_batch, self._predict_batch, batch.rows, self.name)
        except asyncio.CancelledError:
            self._fail_batch(batch, ShuttingDown("server stopped while the rows ran"))
            raise
        except BatchFailed as failed:  # logged where it was raised
            self._fail_batch(batch, failed.error)
            return None
        except BaseException as exc:  # keep the loop alive whatever the backend does
            log.exception("model %s: batch of %d rows failed", self.name, len(batch.rows))
            self._fail_batch(batch, BackendError(
                f"model '{self.name}' failed on this batch: {type(exc).__name__}"))
            return None
        finally:
            elapsed = time.perf_counter() - started
            self._metrics.batch_duration.observe(elapsed)
            self.load.batch_ran(len(batch.rows), elapsed)
            if inline:  # CPU time: the loop's thread being preempted is not the model's doing
                computed_s = time.thread_time() - cpu_started
                if (paused := self.load.held_loop(computed_s)) is not None:
                    log.info("model %s: a batch held the event loop %.1f ms; its batches run "
                             "on its thread for the next %d", self.name, computed_s * 1000, paused)
        return outcomes, computed_s

    def _fail_batch(self, batch: Batch, error: BatchserveError) -> None:
        for request, _, _ in batch.slices:
            self._fail(request, error, reason=None)

    def _worker_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._closing:
            return
        exc = task.exception()
        self.broken = f"batching loop stopped: {exc!r}" if exc else "batching loop stopped"
        log.error("model %s: %s", self.name, self.broken)
        for request in list(self._queue):
            self._fail(request, BackendError(f"model '{self.name}' is broken: {self.broken}"),
                       reason=None)
        self._queue.clear()
