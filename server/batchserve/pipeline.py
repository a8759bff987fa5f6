"""The request path every protocol shares, in this order:

1. arrival: the deadline is fixed now, from ``X-Request-Timeout-Ms`` (a malformed one is a 422
   before anything is read) and the model's ``timeout_ms``;
2. admission: draining, the model (lookup, readiness) as soon as it is known;
3. the body, read under that deadline and the size limit;
4. the protocol's decoding into items (the adapter; on a worker thread when its work grows past
   what the event loop may spend), then the item count, the parameters, and the queue's
   admission (capacity, and whether the rows could start before the deadline: before
   preprocessing that is heavy or large, else as the batcher admits the rows);
5. preprocessing: inline when light; heavy (``preprocess_in_thread``: image decoding) on worker
   threads (``preprocessing.py``);
6. the model's batcher; 7. the adapter's encoding;

with the outcome counted once in ``batchserve_requests_total``, whatever it is: an error that is
not a ``BatchserveError`` is logged and answered as a 500.

Two ways through it, the same stages: ``Pipeline.serve``, an ASGI request (any body, any model),
and ``Pipeline.serve_now``, for the HTTP protocol (``protocol.py``): a request whose whole body
came with its headers and that every stage can serve on the event loop is taken without a task,
and answered from its batch's delivery by a callback. It declines, having done nothing, whatever
needs a worker thread or a wait, and the ASGI path serves that.

The protocols are adapters (``Adapter``) that only turn their wire format into items and outputs
into their wire format: ``/predict`` (``batchserve/predict.py``), v2 REST (``batchserve/v2``),
OpenAI embeddings (``batchserve/openai_api.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.types import Receive, Scope

from batchserve.bodies import check_read_deadline, declared_length, read_body
from batchserve.errors import (
    BatchserveError,
    ClientDisconnected,
    InvalidInput,
    ModelNotReady,
    ShuttingDown,
    TooManyItems,
)
from batchserve.execution import Request
from batchserve.headers import RequestHeaders, requested_timeout_ms
from batchserve.preprocessing import OffLoop, disconnect_waiter, preprocess_items
from batchserve.registry import ServedModel
from batchserve.state import AppState

log = logging.getLogger(__name__)

OFFLOAD_BYTES = 64 * 1024
"""Bodies larger than this are decoded, and light preprocessing runs, on a worker thread: that
work grows with the body, and the event loop must not wait on it (~1 ms per 64 KiB at most)."""
OFFLOAD_OUTPUTS = 32
"""Responses of more outputs than this are encoded on a worker thread: 384 floats of an embedding
take ~17 us to encode as JSON, so 32 of them stay within the event loop's ~1 ms."""


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
    def decodes_on_loop(self, headers: RequestHeaders, size: int) -> bool:
        """Whether decoding a body of ``size`` bytes is light enough for the event loop; when
        not, ``decode`` runs on a worker thread."""

    @abstractmethod
    def decode(self, body: bytes, headers: RequestHeaders, scope: Scope,
               model: ServedModel | None) -> Decoded:
        """The items of ``body``; ``model`` is the one the path names, if it does."""

    @abstractmethod
    def encode(self, model: ServedModel, decoded: Decoded, outputs: list[Any]) -> Response:
        """The response to a request whose rows all ran."""

    @abstractmethod
    def error(self, exc: BatchserveError) -> Response:
        """The response to a request that failed."""


class Exchange:
    """One inference request through the stages: when it arrived, its headers, and its model
    from when that is known (the outcome is counted for it from then on)."""

    __slots__ = ("adapter", "arrived_s", "headers", "model", "name", "requested_ms", "scope")

    def __init__(self, adapter: Adapter, scope: Scope, name: str | None, headers: RequestHeaders) -> None:
        self.arrived_s = time.monotonic()
        self.adapter = adapter
        self.scope = scope
        self.name = name  # the model the path names, if any
        self.headers = headers  # of scope["headers"]
        self.model: ServedModel | None = None
        self.requested_ms: float | None = None  # X-Request-Timeout-Ms

    def deadline(self, model: ServedModel) -> tuple[float, float]:
        """The request's timeout on ``model`` and its deadline (``time.monotonic()``)."""
        timeout_s = _timeout_ms(model.config.timeout_ms, self.requested_ms) / 1000.0
        return timeout_s, self.arrived_s + timeout_s


Answer = Callable[[Response], None]


class Pipeline:
    """Serves one inference request through an adapter; one per app."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self._off_loop = OffLoop()
        self._longest_ms = 0.0  # the longest timeout_ms of the models, as of _longest_at_s
        self._longest_at_s = float("-inf")

    async def serve(self, adapter: Adapter, scope: Scope, receive: Receive, name: str | None) -> Response:
        """Answer the ASGI request in ``scope``; ``name`` is the model the path names, if any."""
        ex = Exchange(adapter, scope, name, RequestHeaders(scope["headers"]))
        try:
            read_by_s = self._admit(ex)
            body = await read_body(receive, ex.headers.content_length,
                                   limit=self.state.settings.max_body_bytes, deadline_s=read_by_s,
                                   budget=self.state.bodies)
            if adapter.decodes_on_loop(ex.headers, len(body)):
                decoded = adapter.decode(body, ex.headers, scope, ex.model)
            else:
                decoded = await run_in_threadpool(adapter.decode, body, ex.headers, scope, ex.model)
            self._named(ex, decoded)
            outputs = await self._infer(ex, decoded, receive, large=len(body) > OFFLOAD_BYTES)
            model = ex.model
            assert model is not None
            if len(outputs) > OFFLOAD_OUTPUTS:  # encoding grows with the outputs: off the loop
                response = await run_in_threadpool(adapter.encode, model, decoded, outputs)
            else:
                response = adapter.encode(model, decoded, outputs)
        except Exception as exc:
            return self.failed(ex, exc)
        return self.succeeded(ex, response)

    def serve_now(self, adapter: Adapter, scope: Scope, name: str | None, headers: RequestHeaders,
                  body: bytes, answer: Answer) -> Pending | None:
        """Take the request in ``scope``, whose whole ``body`` is in hand, without a task, if
        every stage can serve it on the event loop now: its adapter decodes it on the loop, its
        model's preprocessing is light, and it has at most ``OFFLOAD_OUTPUTS`` items. ``answer``
        is called once with its response, from the batch's delivery (or before this returns).
        ``None``: declined, nothing done or counted; ``serve`` must take it. ``headers``: of
        ``scope["headers"]``, which the caller has read already."""
        ex = Exchange(adapter, scope, name, headers)
        pending = Pending(self, ex, answer)
        try:
            read_by_s = self._admit(ex)
            declared_length(headers.content_length, self.state.settings.max_body_bytes)  # 413
            check_read_deadline(read_by_s)
            if not adapter.decodes_on_loop(headers, len(body)) or not _light(ex.model):
                return None
            decoded = adapter.decode(body, headers, scope, ex.model)
            if not _light(self._named(ex, decoded)) or len(decoded.items) > OFFLOAD_OUTPUTS:
                return None
            self.check_items(decoded.items)
            pending.submit(decoded)
        except Exception as exc:
            answer(self.failed(ex, exc))
        return pending

    def failed(self, ex: Exchange, exc: Exception) -> Response:
        """The response to ``exc``, counted for the request's model if known; an error that is not
        a ``BatchserveError`` is logged, and answered as a 500."""
        if not isinstance(exc, BatchserveError):
            scope = ex.scope
            log.error("unexpected error serving %s %s (model %s)", scope["method"], scope["path"],
                      None if ex.model is None else ex.model.config.name, exc_info=exc)
            exc = BatchserveError("internal error; see the server log")
        if ex.model is not None:
            ex.model.metrics.count_request(exc.status)
        return ex.adapter.error(exc)

    def succeeded(self, ex: Exchange, response: Response) -> Response:
        assert ex.model is not None  # a request that ran had a model
        ex.model.metrics.request_succeeded(time.monotonic() - ex.arrived_s)
        return response

    def _admit(self, ex: Exchange) -> float:
        """Stages 1 and 2; by when the body must have been read (``time.monotonic()``)."""
        if self.state.draining:
            raise ShuttingDown("server is shutting down")
        headers = ex.headers
        if headers.timeout_ms is not None:
            ex.requested_ms = requested_timeout_ms(headers.timeout_ms)
        ex.adapter.check(headers, ex.name)
        if ex.name is not None:
            model = ex.model = self.state.registry.get(ex.name)  # known: its outcome counts
            check_ready(model)
            read_ms = _timeout_ms(model.config.timeout_ms, ex.requested_ms)
        else:  # the body names the model: read it within the longest deadline it could have
            read_ms = _timeout_ms(self._longest_timeout_ms(ex.arrived_s), ex.requested_ms)
        return ex.arrived_s + read_ms / 1000.0

    def _named(self, ex: Exchange, decoded: Decoded) -> ServedModel:
        """The request's model, looked up now if only its body names it."""
        if ex.model is None:
            if decoded.model is None:  # an adapter's bug, not the client's
                raise RuntimeError(f"{type(ex.adapter).__name__} decoded a request naming no model")
            ex.model = self.state.registry.get(decoded.model)
            check_ready(ex.model)
        return ex.model

    def _longest_timeout_ms(self, now_s: float) -> float:
        """The longest ``timeout_ms`` of the models, looked up at most once a second (a change by
        the management API shows within that second)."""
        if now_s - self._longest_at_s >= 1.0:
            self._longest_ms = max((m.config.timeout_ms for m in self.state.registry), default=0.0)
            self._longest_at_s = now_s
        return self._longest_ms

    def check_items(self, items: list[Any]) -> None:
        if not items:
            raise InvalidInput("the request has no items (a tensor with 0 rows?)")
        max_items = self.state.settings.max_items
        if len(items) > max_items:
            raise TooManyItems(f"request has {len(items)} items; at most {max_items} "
                               "per request (BATCHSERVE_MAX_ITEMS)")

    def successor(self, model: ServedModel, exc: ShuttingDown) -> ServedModel:
        """The version that serves ``model`` now that a reload (management API) retired it, while
        a request was admitted, preprocessed or queued; ``exc`` (a 503) if none, or draining."""
        current = self.state.registry.current(model)
        if current is None or self.state.draining:
            raise exc
        return current

    def queue(self, ex: Exchange, decoded: Decoded,
              disconnected: Callable[[], Awaitable[object]] | None = None) -> tuple[ServedModel, Request]:
        """Preprocess the items on the loop (light) and queue their rows with ``ex.model``'s
        batcher, watched (``Batcher.admit``) until they leave it; a version that a reload is
        retiring hands them to its successor (then ``ex.model``). The model that has them."""
        while True:
            model = ex.model
            assert model is not None
            timeout_s, deadline_s = ex.deadline(model)
            try:
                backend = model.backend
                rows = preprocess_items(backend, decoded.items,
                                        backend.parse_parameters(decoded.parameters), None)
                return model, model.batcher.admit(rows, timeout_s=timeout_s, deadline_s=deadline_s,
                                                  disconnected=disconnected)
            except ShuttingDown as exc:
                ex.model = self.successor(model, exc)

    async def _infer(self, ex: Exchange, decoded: Decoded, receive: Receive, *,
                     large: bool) -> list[Any]:
        """Admit, preprocess and run the items on ``ex.model`` (or the version that succeeds it
        in a reload, which ``ex.model`` then is); their outputs."""
        items = decoded.items
        self.check_items(items)
        disconnected = disconnect_waiter(receive)
        while True:
            model = ex.model
            assert model is not None
            try:
                if model.backend.preprocess_in_thread or large:
                    timeout_s, deadline_s = ex.deadline(model)
                    # don't decode what the queue would refuse (the batcher checks again, as
                    # it admits the rows: light, small requests are checked there only); a
                    # version that a reload is retiring hands the request to its successor
                    model = ex.model = self.state.registry.admit(model, len(items), deadline_s)
                    parameters = model.backend.parse_parameters(decoded.parameters)
                    rows = await self._off_loop.preprocess(model, items, parameters, deadline_s,
                                                           receive)
                    request = model.batcher.admit(rows, timeout_s=timeout_s, deadline_s=deadline_s,
                                                  disconnected=disconnected)
                else:
                    model, request = self.queue(ex, decoded, disconnected)
                return await model.batcher.wait(request)
            except ShuttingDown as exc:
                ex.model = self.successor(model, exc)


class Pending:
    """A request ``Pipeline.serve_now`` took: its rows in its model's batcher until the batch's
    delivery calls ``answer``; ``abandon`` when its client goes away first."""

    __slots__ = ("_answer", "_decoded", "_ex", "_pipeline", "_request")

    def __init__(self, pipeline: Pipeline, ex: Exchange, answer: Answer) -> None:
        self._pipeline = pipeline
        self._ex = ex
        self._answer = answer
        self._decoded: Decoded | None = None
        self._request: Request | None = None

    def submit(self, decoded: Decoded) -> None:
        """Queue the rows (``Pipeline.queue``); raises what admission refuses."""
        self._decoded = decoded
        _, self._request = self._pipeline.queue(self._ex, decoded)
        self._request.future.add_done_callback(self._delivered)

    def abandon(self) -> None:
        """The client went away: its rows not yet run never will (``rejected{cancelled}``)."""
        request, model = self._request, self._ex.model
        if request is not None and not request.done and model is not None:
            model.batcher.abandon(request, ClientDisconnected("client disconnected before its rows ran"))

    def _delivered(self, future: asyncio.Future[list[Any]]) -> None:
        pipeline, ex, request, decoded = self._pipeline, self._ex, self._request, self._decoded
        assert ex.model is not None and request is not None and decoded is not None
        ex.model.batcher.leave(request)
        try:
            if future.cancelled():
                raise ClientDisconnected("client disconnected before its rows ran")
            try:
                outputs = future.result()
            except ShuttingDown as exc:  # reloaded while queued: the new version serves it
                ex.model = pipeline.successor(ex.model, exc)
                self.submit(decoded)
                return
            response = ex.adapter.encode(ex.model, decoded, outputs)
        except Exception as exc:
            self._answer(pipeline.failed(ex, exc))
            return
        self._answer(pipeline.succeeded(ex, response))


def _light(model: ServedModel | None) -> bool:
    """No heavy preprocessing (or the model is not known yet)."""
    return model is None or not model.backend.preprocess_in_thread


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
