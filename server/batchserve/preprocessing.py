"""Turning a request's items into the rows its model's batcher takes (``Backend.preprocess``):
on the event loop when light, on worker threads when heavy (image decoding, say) or many.

Heavy preprocessing runs a bounded number of requests per model at a time
(``preprocess_concurrency``, default the cores), and stops between items once the request's
deadline passes or its client goes away.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.types import Receive

from batchserve.backends.base import Backend
from batchserve.errors import ClientDisconnected, DeadlineExceeded, InvalidInput
from batchserve.execution import Disconnected
from batchserve.load import Backlog
from batchserve.registry import ServedModel

log = logging.getLogger(__name__)


class Stop:
    """When preprocessing on a worker thread stops: at the deadline, or once the client is gone.
    Checked between items on that thread; ``gone`` is set from the event loop."""

    __slots__ = ("deadline_s", "gone")

    def __init__(self, deadline_s: float) -> None:
        self.deadline_s = deadline_s
        self.gone = False

    def on_disconnect(self, watch: asyncio.Future[object]) -> None:
        if not watch.cancelled() and watch.exception() is None:
            self.gone = True

    def check(self, index: int) -> None:
        if self.gone:
            raise ClientDisconnected("client disconnected while its items were preprocessed")
        if time.monotonic() >= self.deadline_s:
            raise DeadlineExceeded(f"deadline passed while preprocessing, before item {index}")


def preprocess_items(backend: Backend[Any, Any], items: list[Any], parameters: Any,
                     stop: Stop | None) -> list[Any]:
    """Every item's row; whatever an item makes ``preprocess`` raise is that item's 400."""
    try:
        items = backend.check_items(items, parameters)  # the request as a whole, before any item
    except InvalidInput:
        raise
    except Exception as exc:  # whatever a client sends is a 4xx, never a 5xx
        log.warning("model %s: check_items raised", backend.config.name, exc_info=True)
        raise InvalidInput(f"the request's items could not be read ({type(exc).__name__})") from None
    rows = []
    for index, item in enumerate(items):
        if stop is not None:
            stop.check(index)
        try:
            rows.append(backend.preprocess(item, parameters))
        except InvalidInput as exc:
            raise InvalidInput(f"item {index}: {exc.message}") from None
        except Exception as exc:  # whatever a client sends is a 4xx, never a 5xx
            log.warning("model %s: preprocess raised on item %d", backend.config.name, index,
                        exc_info=True)
            raise InvalidInput(f"item {index}: could not be read ({type(exc).__name__})") from None
    return rows


class OffLoop:
    """Preprocessing on worker threads; one per app (it keeps each model's slots and backlog)."""

    def __init__(self) -> None:
        # model name -> its backlog, and the semaphore of its heavy preprocessing slots
        self._models: dict[str, tuple[Backlog, asyncio.Semaphore]] = {}

    def backlog(self, model: ServedModel) -> Backlog:
        """The model's heavy preprocessing now: ``preprocess_concurrency`` slots (default the
        cores), the items waiting for or in them, and how long a slot takes per item."""
        return self._of(model)[0]

    def _of(self, model: ServedModel) -> tuple[Backlog, asyncio.Semaphore]:
        name = model.config.name
        count = model.config.preprocess_concurrency or _cores()
        known = self._models.get(name)
        if known is None or known[0].slots != count:  # first use, or reloaded with another count
            known = self._models[name] = (Backlog(slots=count), asyncio.Semaphore(count))
        return known

    async def preprocess(self, model: ServedModel, items: list[Any], parameters: Any,
                         deadline_s: float, disconnected: Disconnected) -> list[Any]:
        """Many light items, or heavy ones (a bounded number of requests per model at once,
        honouring the deadline and the client's disconnect, counted in the model's backlog)."""
        backend = model.backend
        if not backend.preprocess_in_thread:
            return await run_in_threadpool(preprocess_items, backend, items, parameters, None)
        stop = Stop(deadline_s)
        watch = asyncio.ensure_future(disconnected())
        watch.add_done_callback(stop.on_disconnect)
        backlog, slots = self._of(model)
        backlog.rows += len(items)
        try:
            try:
                async with asyncio.timeout(deadline_s - time.monotonic()):
                    await slots.acquire()
            except TimeoutError:
                raise DeadlineExceeded("deadline passed while waiting to preprocess "
                                       f"(model '{model.config.name}' is busy decoding)") from None
            try:
                stop.check(0)
                started = time.monotonic()
                rows = await run_in_threadpool(preprocess_items, backend, items, parameters, stop)
                backlog.preprocessed(len(items), time.monotonic() - started)
                return rows
            finally:
                slots.release()
        except DeadlineExceeded:
            model.metrics.rejected["deadline"].inc()
            raise
        except ClientDisconnected:
            model.metrics.rejected["cancelled"].inc()
            raise
        finally:
            backlog.rows -= len(items)
            watch.cancel()


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def disconnect_waiter(receive: Receive) -> Disconnected:
    """``Disconnected`` for an ASGI request."""
    async def wait() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
    return wait
