"""Reading request bodies: a size limit, a deadline, and a budget of bytes for all of them.

A client that declares a large body and sends it slowly (or stops) holds the server's memory
for as long as the read lasts. Three bounds keep that finite: each body is refused (413)
without reading past ``limit``; its read ends at ``deadline_s`` (408); and every body being
read reserves its bytes in one process-wide :class:`BodyBudget`, so that when the budget is
spent new bodies are refused with 503 and a Retry-After *before* any of their bytes is read.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.types import Receive

from batchserve.errors import (
    BodyBudgetFull,
    BodyTooLarge,
    ClientDisconnected,
    MalformedRequest,
    RequestTimeout,
)

CHUNKED_STEP_BYTES = 64 * 1024
"""What a body without a Content-Length (chunked) reserves up front, and grows by."""

# A 408 closes the connection: the client is stalled in the middle of a body. Other refusals
# keep it, and the server discards the rest of the body as it arrives (closing with unread
# bytes would reset the connection, and the client would often not see the answer).
_CLOSE = {"Connection": "close"}


class BodyBudget:
    """Bytes reserved by the bodies being read, at most ``capacity`` in all, and the deadlines
    of those reads.

    Used from the event loop only (no lock): a reservation is a counter, not an allocation.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.reserved = 0
        self.deadlines = ReadDeadlines()

    def reserve(self, size: int) -> None:
        """Reserve ``size`` more bytes, or raise :class:`BodyBudgetFull` (503) reserving none."""
        if self.reserved + size > self.capacity:
            raise BodyBudgetFull(
                f"the server is reading {self.reserved} bytes of other request bodies; "
                f"{size} more would pass its budget of {self.capacity} "
                "(BATCHSERVE_MAX_INFLIGHT_BODY_BYTES); retry later")
        self.reserved += size

    def release(self, size: int) -> None:
        self.reserved -= size


class ReadDeadlines:
    """The deadlines of the bodies being read, enforced by one check every ``TICK_S`` that
    cancels the reads past theirs, rather than a timer per request: a timer (``asyncio.timeout``)
    costs ~6 us a request, most of a small request's overhead here, while nearly every body
    has arrived with its headers. A read ends at most ``TICK_S`` after its deadline."""

    TICK_S = 0.1

    def __init__(self) -> None:
        self._reading: dict[asyncio.Task[object], float] = {}
        self._expired: set[asyncio.Task[object]] = set()
        self._timer: asyncio.TimerHandle | None = None

    def enter(self, task: asyncio.Task[object], deadline_s: float) -> None:
        self._reading[task] = deadline_s
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.TICK_S, self._tick)

    def leave(self, task: asyncio.Task[object]) -> bool:
        """Stop watching ``task``'s read; ``True`` if its deadline cancelled it."""
        self._reading.pop(task, None)
        if task in self._expired:
            self._expired.discard(task)
            return True
        return False

    def _tick(self) -> None:
        self._timer = None
        now = time.monotonic()
        for task, deadline_s in list(self._reading.items()):
            if deadline_s <= now:
                del self._reading[task]
                self._expired.add(task)
                task.cancel()
        if self._reading:
            self._timer = asyncio.get_running_loop().call_later(self.TICK_S, self._tick)


def declared_length(declared: bytes | None, limit: int) -> int | None:
    """The Content-Length as a number (``None`` when absent), 413 past ``limit``, 422 if malformed."""
    if declared is None:
        return None
    value = declared.strip()
    if value.isdigit():
        value = value.lstrip(b"0") or b"0"  # int() refuses over 4,300 digits, zeros included
    else:  # bytes.isdigit() is ASCII only: no '²', no sign, no spaces inside
        raise MalformedRequest(f"header Content-Length must be a non-negative integer, "
                               f"got {declared.decode('latin-1')!r:.40}")
    # Compare lengths first: int() of thousands of digits is slow (and refused past 4300).
    length = int(value) if len(value) <= len(str(limit)) else limit + 1
    if length > limit:
        raise BodyTooLarge(f"body of {value.decode()[:40]} bytes exceeds the limit of {limit} bytes "
                           "(BATCHSERVE_MAX_BODY_BYTES)")
    return length


def check_read_deadline(deadline_s: float) -> None:
    """408 if ``deadline_s`` (``time.monotonic()``) has passed before the body was read."""
    if time.monotonic() >= deadline_s:
        raise RequestTimeout("the request's deadline (its X-Request-Timeout-Ms, or the model's "
                             "timeout_ms) passed on its arrival, before its body could be read",
                             headers=_CLOSE)


async def read_body(chunks: Callable[[], AsyncIterator[bytes]], declared: bytes | None, *, limit: int,
                    deadline_s: float, budget: BodyBudget,
                    whole: Callable[[], Awaitable[bytes]] | None = None) -> bytes:
    """The whole body, read by ``deadline_s`` (a ``time.monotonic()`` instant) from the iterator
    ``chunks`` makes (the HTTP server's: ``AsgiChunks``), or with one ``whole()`` when the server
    has one and the body's length was declared within ``limit`` (the server stops at that length:
    one await instead of one per chunk and one for the end).

    Raises 413 (over ``limit``, from the Content-Length or while reading chunks, never reading
    past it), 422 (a malformed Content-Length), 503 (the budget is spent; nothing read), 408
    (not complete by the deadline), 499 (the client went away: ``chunks`` raises it). The
    reservation is released when this returns or raises: the caller owns the bytes it got.
    """
    length = declared_length(declared, limit)
    reserved = length if length is not None else min(CHUNKED_STEP_BYTES, limit)
    budget.reserve(reserved)
    parts: list[bytes] = []
    size = 0
    task = asyncio.current_task()
    assert task is not None  # a request is served in a task
    try:
        check_read_deadline(deadline_s)
    except RequestTimeout:
        budget.release(reserved)
        raise
    budget.deadlines.enter(task, deadline_s)
    expired = False
    try:
        if whole is not None and length is not None:
            return await whole()
        async for chunk in chunks():
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"body exceeds the limit of {limit} bytes "
                                   "(BATCHSERVE_MAX_BODY_BYTES)")
            if size > reserved:  # chunked, or more than declared (the server's parser forbids it)
                grow = min(max(size - reserved, CHUNKED_STEP_BYTES), limit - reserved)
                budget.reserve(grow)
                reserved += grow
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)
    except asyncio.CancelledError:
        expired = budget.deadlines.leave(task)
        if not expired:
            raise
        task.uncancel()  # the cancellation was our deadline's, not the caller's
        raise RequestTimeout(f"the request body was not complete by the request's deadline "
                             f"({size} bytes received)", headers=_CLOSE) from None
    finally:
        if not expired:
            budget.deadlines.leave(task)
        budget.release(reserved)


class AsgiChunks:
    """An ASGI request's body, chunk by chunk; ``ClientDisconnected`` if the client goes away.
    (An async iterator, not an async generator: mypyc can compile the one, not the other.)"""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._ended = False

    def __aiter__(self) -> AsgiChunks:
        return self

    async def __anext__(self) -> bytes:
        if self._ended:
            raise StopAsyncIteration
        message = await self._receive()
        if message["type"] != "http.request":
            raise ClientDisconnected("client disconnected while sending the body")
        self._ended = not message.get("more_body", False)
        body: bytes = message.get("body", b"")
        return body
