"""The deadlines and disconnect watches of a batcher's requests in flight, kept by one timer.

A timer per request (``loop.call_later``, then its cancel) costs ~4 us on uvloop, about a fifth
of what batchserve spends of its own on a small request, while nearly every request is answered
long before its deadline. So a batcher keeps the requests it has admitted and not answered in
one :class:`InFlight`, which wakes at the earliest next check among them (but at most once every
``TICK_S``: a request's deadline is enforced at most ``TICK_S`` late, when many checks are due
close together), and at each wake-up:

- fails (504) the requests whose deadline passed, queued or running;
- starts the disconnect watch of those that have waited ``WATCH_AFTER_S``: watching costs a task
  per request, more than a small model spends per row, so a client that goes away is noticed
  only once its request has waited that long.
"""

from __future__ import annotations

import asyncio
import math
import time

from batchserve.errors import ClientDisconnected, DeadlineExceeded
from batchserve.execution import Disconnected, Fail, Request

WATCH_AFTER_S = 0.05
TICK_S = 0.005


class InFlight:
    """A batcher's admitted requests not yet answered, in admission order; event loop only."""

    def __init__(self, fail: Fail) -> None:
        self._fail = fail
        self._requests: dict[Request, None] = {}  # an ordered set (Request hashes by identity)
        self._timer: asyncio.TimerHandle | None = None
        self._armed_s = math.inf  # when the timer fires
        self._ticked_s = -math.inf  # when it last fired

    def __len__(self) -> int:
        return len(self._requests)

    def enter(self, request: Request, disconnected: Disconnected | None) -> None:
        """Watch ``request`` from now until ``leave``: its deadline, and (with ``disconnected``,
        which makes an awaitable that completes once the client is gone) its client."""
        request.disconnected = disconnected
        request.check_s = (min(request.enqueued_s + WATCH_AFTER_S, request.deadline_s)
                           if disconnected is not None else request.deadline_s)
        self._requests[request] = None
        if request.check_s < self._armed_s:
            self._arm(request.check_s)

    def leave(self, request: Request) -> None:
        """Stop watching ``request`` (answered, failed or abandoned): its watch is cancelled. The
        timer stays armed; with nothing left to check when it fires, it is not armed again."""
        self._requests.pop(request, None)
        if request.watcher is not None:
            request.watcher.cancel()

    def _arm(self, at_s: float) -> None:
        at_s = max(at_s, self._ticked_s + TICK_S)
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(at_s - time.monotonic(), self._tick)
        self._armed_s = at_s

    def _tick(self) -> None:
        self._timer = None
        self._armed_s = math.inf
        now = self._ticked_s = time.monotonic()
        next_s = math.inf
        for request in list(self._requests):
            if request.done:  # failed in this loop turn; its caller leaves soon
                continue
            if request.check_s <= now:
                self._check(request, now)
                if request.done:
                    continue
            next_s = min(next_s, request.check_s)
        if next_s < math.inf:
            self._arm(next_s)

    def _check(self, request: Request, now: float) -> None:
        if request.deadline_s <= now:
            when = "while its rows ran" if request.next_row else "before the rows ran"
            self._fail(request, DeadlineExceeded(
                f"deadline ({(request.deadline_s - request.enqueued_s) * 1000:.0f} ms after "
                f"admission) passed {when}"), reason="deadline")
            return
        if request.disconnected is not None and request.watcher is None:
            request.watcher = watcher = asyncio.ensure_future(request.disconnected())
            watcher.add_done_callback(lambda task: None if task.cancelled() else self._fail(
                request, ClientDisconnected("client disconnected before its rows ran"), reason="cancelled"))
        request.check_s = request.deadline_s
