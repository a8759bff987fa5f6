"""The request path every protocol shares, in this order:

1. arrival: the deadline is fixed now, from ``X-Request-Timeout-Ms`` (a malformed one is a 422
   before anything is read) and the model's ``timeout_ms``;
2. admission: draining, the model (lookup, readiness) as soon as it is known;
3. the body, read under that deadline and the size limit;
4. the protocol's decoding into items (the adapter), then the item count, the parameters, and
   the queue's admission (capacity, and whether the rows could start before the deadline:
   before preprocessing that is heavy or large, else as the batcher admits the rows);
5. preprocessing: inline when light; heavy (``preprocess_in_thread``: image decoding) on worker
   threads, a bounded number of requests per model at a time, stopping between items once the
   deadline passes or the client goes away;
6. the model's batcher; 7. the adapter's encoding;

with the outcome counted once in ``batchserve_requests_total``, whatever it is: an error that is
not a ``BatchserveError`` is logged and answered as a 500.

The protocols are adapters (``Adapter``) that only turn their wire format into items and outputs
into their wire format: ``/predict`` (``batchserve/predict.py``), v2 REST (``batchserve/v2``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.types import Receive, Scope

from batchserve.backends.base import Backend
from batchserve.bodies import read_body
from batchserve.errors import (
    BatchserveError,
    ClientDisconnected,
    DeadlineExceeded,
    InvalidInput,
    MalformedRequest,
    ModelNotReady,
    ShuttingDown,
    TooManyItems,
)
from batchserve.registry import ServedModel
from batchserve.state import AppState

log = logging.getLogger(__name__)

OFFLOAD_BYTES = 64 * 1024
"""Bodies larger than this are decoded, and light preprocessing runs, on a worker thread: that
work grows with the body, and the event loop must not wait on it (~1 ms per 64 KiB at most)."""
OFFLOAD_OUTPUTS = 32
"""Responses of more outputs than this are encoded on a worker thread: 384 floats of an embedding
take ~17 us to encode as JSON, so 32 of them stay within the event loop's ~1 ms."""
TIMEOUT_HEADER = b"x-request-timeout-ms"


class RequestHeaders:
    """The request headers the inference routes read, found in one pass over the raw list."""

    __slots__ = ("content_length", "content_type", "content_type_raw", "header_length", "timeout_ms")

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self.content_length: bytes | None = None
        self.content_type = ""  # the media type, lower case, without parameters
        self.content_type_raw = ""  # with parameters (a multipart boundary, say)
        self.timeout_ms: bytes | None = None
        self.header_length: bytes | None = None  # v2's Inference-Header-Content-Length
        for key, value in raw:  # ASGI servers give lower-case names
            if key == b"content-type":
                self.content_type_raw = value.decode("latin-1")
                self.content_type = self.content_type_raw.partition(";")[0].strip().lower()
            elif key == b"content-length":
                self.content_length = value
            elif key == TIMEOUT_HEADER:
                self.timeout_ms = value
            elif key == b"inference-header-content-length":
                self.header_length = value


@dataclass(slots=True)
class Decoded:
    """A request as its protocol's adapter decoded it."""

    items: list[Any]
    parameters: Mapping[str, Any]
    model: str | None = None
    """The model the body names; needed only when the path names none."""
    context: Any = None
    """What the adapter needs back to encode the outputs (v2: the parsed request)."""


class Adapter(ABC):
    """A protocol's wire format: request bodies to items, outputs and errors to responses."""

    def check(self, headers: RequestHeaders, model: str | None) -> None:  # noqa: B027 - optional
        """Refuse, before the body is read, what the headers already show cannot be served."""

    @abstractmethod
    async def decode(self, body: bytes, headers: RequestHeaders, scope: Scope,
                     model: ServedModel | None) -> Decoded:
        """The items of ``body``; ``model`` is the one the path names, if it does. Work that grows
        with the body runs off the event loop above ``OFFLOAD_BYTES``."""

    @abstractmethod
    def encode(self, model: ServedModel, decoded: Decoded, outputs: list[Any]) -> Response:
        """The response to a request whose rows all ran."""

    @abstractmethod
    def error(self, exc: BatchserveError) -> Response:
        """The response to a request that failed."""


class Pipeline:
    """Serves one inference request through an adapter; one per app."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self._slots: dict[str, asyncio.Semaphore] = {}  # model name -> heavy preprocessing slots
        self._slot_counts: dict[str, int] = {}
        self._longest_ms = 0.0  # the longest timeout_ms of the models, as of _longest_at_s
        self._longest_at_s = float("-inf")

    async def serve(self, adapter: Adapter, scope: Scope, receive: Receive, name: str | None) -> Response:
        """Answer the request in ``scope``; ``name`` is the model the path names, if any."""
        arrived_s = time.monotonic()
        model: ServedModel | None = None
        try:
            if self.state.draining:
                raise ShuttingDown("server is shutting down")
            headers = RequestHeaders(scope["headers"])
            requested_ms = None if headers.timeout_ms is None else requested_timeout_ms(headers.timeout_ms)
            adapter.check(headers, name)
            if name is not None:
                model = self.state.registry.get(name)  # known from here on: its outcome counts
                check_ready(model)
                read_ms = _timeout_ms(model.config.timeout_ms, requested_ms)
            else:  # the body names the model: read it within the longest deadline it could have
                read_ms = _timeout_ms(self._longest_timeout_ms(arrived_s), requested_ms)
            body = await read_body(receive, headers.content_length,
                                   limit=self.state.settings.max_body_bytes,
                                   deadline_s=arrived_s + read_ms / 1000.0, budget=self.state.bodies)
            decoded = await adapter.decode(body, headers, scope, model)
            if model is None:
                if decoded.model is None:  # an adapter's bug, not the client's
                    raise RuntimeError(f"{type(adapter).__name__} decoded a request naming no model")
                model = self.state.registry.get(decoded.model)
                check_ready(model)
            model, outputs = await self._infer(model, decoded, requested_ms, arrived_s, receive,
                                               large=len(body) > OFFLOAD_BYTES)
            if len(outputs) > OFFLOAD_OUTPUTS:  # encoding grows with the outputs: off the loop
                response = await run_in_threadpool(adapter.encode, model, decoded, outputs)
            else:
                response = adapter.encode(model, decoded, outputs)
        except BatchserveError as exc:
            if model is not None:
                model.metrics.count_request(exc.status)
            return adapter.error(exc)
        except Exception:
            log.exception("unexpected error serving %s %s (model %s)", scope["method"], scope["path"],
                          None if model is None else model.config.name)
            if model is not None:
                model.metrics.count_request(500)
            return adapter.error(BatchserveError("internal error; see the server log"))
        model.metrics.request_succeeded(time.monotonic() - arrived_s)
        return response

    def _longest_timeout_ms(self, now_s: float) -> float:
        """The longest ``timeout_ms`` of the models, looked up at most once a second (a change by
        the management API shows within that second)."""
        if now_s - self._longest_at_s >= 1.0:
            self._longest_ms = max((m.config.timeout_ms for m in self.state.registry), default=0.0)
            self._longest_at_s = now_s
        return self._longest_ms

    async def _infer(self, model: ServedModel, decoded: Decoded, requested_ms: float | None,
                     arrived_s: float, receive: Receive, *, large: bool) -> tuple[ServedModel, list[Any]]:
        """Admit, preprocess and run the items; the model that ran them, and their outputs."""
        items = decoded.items
        if not items:
            raise InvalidInput("the request has no items (a tensor with 0 rows?)")
        max_items = self.state.settings.max_items
        if len(items) > max_items:
            raise TooManyItems(f"request has {len(items)} items; at most {max_items} "
                               "per request (BATCHSERVE_MAX_ITEMS)")
        while True:
            timeout_s = _timeout_ms(model.config.timeout_ms, requested_ms) / 1000.0
            deadline_s = arrived_s + timeout_s
            try:
                heavy = model.backend.preprocess_in_thread or large
                if heavy:
                    # don't decode what the queue would refuse (the batcher checks again, as
                    # it admits the rows: light, small requests are checked there only); a
                    # version that a reload is retiring hands the request to its successor
                    model = self.state.registry.admit(model, len(items), deadline_s)
                backend = model.backend
                parameters = backend.parse_parameters(decoded.parameters)
                if heavy:
                    rows = await self._preprocess_off_loop(model, items, parameters, deadline_s,
                                                           receive)
                else:
                    rows = preprocess_items(backend, items, parameters, None)
                return model, await model.batcher.infer(
                    rows, timeout_s=timeout_s, deadline_s=deadline_s,
                    disconnected=_disconnect_waiter(receive))
            except ShuttingDown:
                # Reloaded (management API) while this request was being admitted or
                # preprocessed: the new model serves it, rather than a 503.
                current = self.state.registry.current(model)
                if current is None or self.state.draining:
                    raise
                model = current

    async def _preprocess_off_loop(self, model: ServedModel, items: list[Any], parameters: Any,
                                   deadline_s: float, receive: Receive) -> list[Any]:
        """On a worker thread: many light items, or heavy ones (a bounded number of requests
        per model at once, honouring the deadline and the client's disconnect)."""
        backend = model.backend
        if not backend.preprocess_in_thread:
            return await run_in_threadpool(preprocess_items, backend, items, parameters, None)
        stop = Stop(deadline_s)
        watch = asyncio.ensure_future(_disconnect_waiter(receive)())
        watch.add_done_callback(stop.on_disconnect)
        slots = self._slots_for(model)
        try:
            try:
                async with asyncio.timeout(deadline_s - time.monotonic()):
                    await slots.acquire()
            except TimeoutError:
                raise DeadlineExceeded("deadline passed while waiting to preprocess "
                                       f"(model '{model.config.name}' is busy decoding)") from None
            try:
                stop.check(0)
                return await run_in_threadpool(preprocess_items, backend, items, parameters, stop)
            finally:
                slots.release()
        except DeadlineExceeded:
            model.metrics.rejected["deadline"].inc()
            raise
        except ClientDisconnected:
            model.metrics.rejected["cancelled"].inc()
            raise
        finally:
            watch.cancel()

    def _slots_for(self, model: ServedModel) -> asyncio.Semaphore:
        """The model's heavy-preprocessing slots: ``preprocess_concurrency``, default the cores."""
        name = model.config.name
        count = model.config.preprocess_concurrency or _cores()
        if self._slot_counts.get(name) != count:  # first use, or reloaded with another count
            self._slots[name] = asyncio.Semaphore(count)
            self._slot_counts[name] = count
        return self._slots[name]


class Stop:
    """When preprocessing on a worker thread stops: at the deadline, or once the client is gone.
    Checked between items on that thread; ``gone`` is set from the event loop."""

    __slots__ = ("deadline_s", "gone")

    def __init__(self, deadline_s: float) -> None:
        self.deadline_s = deadline_s
        self.gone = False

    def on_disconnect(self, watch: asyncio.Future[None]) -> None:
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


def requested_timeout_ms(header: bytes) -> float:
    """``X-Request-Timeout-Ms``, which must be a positive number (422 otherwise)."""
    try:
        requested = float(header)
    except ValueError:
        requested = float("nan")
    if not requested > 0:
        raise MalformedRequest(f"header X-Request-Timeout-Ms must be a positive number, "
                               f"got {header.decode('latin-1')!r:.40}")
    return requested


def check_ready(model: ServedModel) -> None:
    """Refuse (503) a model that is not ready: loading, failed or unloaded."""
    if not model.ready:
        raise not_ready(model)


def not_ready(model: ServedModel) -> ModelNotReady:
    """The 503 for a model that is not ready, saying why."""
    status = model.status()
    return ModelNotReady(f"model '{model.config.name}' is {status['state']}"
                         + (f": {status['reason']}" if status["reason"] else ""))


def _timeout_ms(model_ms: float, requested_ms: float | None) -> float:
    """A request's time from its arrival: the model's ``timeout_ms``, or the header's where that
    is shorter (the header can't lengthen it)."""
    return model_ms if requested_ms is None or requested_ms >= model_ms else requested_ms


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _disconnect_waiter(receive: Receive) -> Callable[[], Coroutine[Any, Any, None]]:
    async def wait() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
    return wait
