"""The stages every inference request goes through, whatever its protocol, in this order:

1. arrival: the deadline is fixed now, from ``X-Request-Timeout-Ms`` (a malformed one is a 422
   before anything is read) and the model's ``timeout_ms``;
2. admission: draining, the model as soon as it is known: the version that serves the request
   (``routing.py``: named, or routed by weights or a routing key), and its readiness;
3. body: read under that deadline, the size limit and the server's byte budget;
4. decode: the protocol's adapter turns it into items (on a worker thread when that work grows
   past what the event loop may spend), then the item count and the parameters;
5. compute_input: preprocessing, inline when light; heavy (``preprocess_in_thread``: image
   decoding) or large on worker threads (``preprocessing.py``), after admission has checked
   that the rows could start before the deadline, counting what is being preprocessed ahead;
6. queue and compute_infer: the model's batcher (which admits the rows, then runs them);
7. compute_output: the adapter's encoding (then the copies to a shadow version start: ``shadow.py``);

with the outcome counted once by the request's ``Call`` (``lifecycle.py``), whatever it is: an
error that is not a ``BatchserveError`` is logged and answered as a 500. A request that needs no
thread and no wait (a whole small body, a light model) runs the same stages with no await but the
one for its batch. A reload (management API) that retires the model's version while a request is
admitted, preprocessed or queued hands the request to the new version, or, where the reload
took that version out, to the one the model's routing picks now (``_serving``).

The protocols are adapters (``lifecycle.Adapter``) that only turn their wire format into items
and outputs into their wire format: ``/predict`` (``batchserve/predict.py``), v2 REST
(``batchserve/v2``), OpenAI embeddings (``batchserve/openai_api.py``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.types import Receive, Scope

from batchserve.bodies import AsgiChunks, read_body
from batchserve.config import repository_root
from batchserve.errors import InvalidInput, ModelNotReady, ShuttingDown, TooManyItems
from batchserve.execution import Disconnected
from batchserve.headers import RequestHeaders, requested_timeout_ms
from batchserve.lifecycle import Adapter, Call, Decoded, timeout_ms
from batchserve.preprocessing import OffLoop, disconnect_waiter, preprocess_items
from batchserve.public_paths import PublicPaths
from batchserve.registry import ServedModel
from batchserve.routing import VERSION_HEADER
from batchserve.state import AppState

OFFLOAD_BYTES = 64 * 1024
"""Bodies larger than this are decoded, and light preprocessing runs, on a worker thread: that
work grows with the body, and the event loop must not wait on it (~1 ms per 64 KiB at most)."""
OFFLOAD_OUTPUTS = 32
"""Responses of more outputs than this are encoded on a worker thread: 384 floats of an embedding
take ~17 us to encode as JSON, so 32 of them stay within the event loop's ~1 ms."""


class Pipeline:
    """Serves inference requests through their adapters; one per app."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self._shown = PublicPaths(repository_root(state.settings.config))  # for a failed model's 503
        self._off_loop = OffLoop()
        self._longest_ms = 0.0  # the longest timeout_ms of the models, as of _longest_at_s
        self._longest_at_s = float("-inf")

    async def serve(self, adapter: Adapter, scope: Scope, receive: Receive, name: str | None,
                    version: str | None = None) -> Response:
        """Answer the ASGI request in ``scope``; ``name`` is the model the path names, if any, and
        ``version`` the version of it."""
        call = Call(adapter, name, RequestHeaders(scope["headers"]), method=scope["method"],
                    path=scope["path"], query=scope.get("query_string", b""), version=version)
        return await self.run(call, lambda: AsgiChunks(receive), disconnect_waiter(receive))

    async def run(self, call: Call, chunks: Callable[[], AsyncIterator[bytes]],
                  disconnected: Disconnected, whole: Callable[[], Awaitable[bytes]] | None = None
                  ) -> Response:
        """Answer ``call``, whose body comes in the chunks ``chunks()`` gives (raising
        ``ClientDisconnected`` when the client goes away), or at once from ``whole()`` when its
        length is declared (``read_body``); ``disconnected`` makes an awaitable that completes
        once the client is gone. What an HTTP server's adapter hands over: any server's request
        is served here."""
        adapter = call.adapter
        tracing = self.state.tracing
        if tracing is not None:
            tracing.begin(call)
        error = None
        try:
            read_by_s = self._admit(call)
            body = await read_body(chunks, call.headers.content_length,
                                   limit=self.state.settings.max_body_bytes, deadline_s=read_by_s,
                                   budget=self.state.bodies, whole=whole)
            call.body_s = time.monotonic()
            if adapter.decodes_on_loop(call.headers, len(body)):
                decoded = adapter.decode(body, call)
            else:
                decoded = await run_in_threadpool(adapter.decode, body, call)
            call.decoded_s = time.monotonic()
            self._named(call, decoded)
            self.check_items(decoded.items)
            call.items = len(decoded.items)
            model, outputs = await self._run(call, decoded, disconnected, large=len(body) > OFFLOAD_BYTES)
            if len(outputs) > OFFLOAD_OUTPUTS:  # encoding grows with the outputs: off the loop
                response = await run_in_threadpool(adapter.encode, model, decoded, outputs)
            else:
                response = adapter.encode(model, decoded, outputs)
            if model.config.version is not None:
                response.headers[VERSION_HEADER] = model.config.version
                self.state.shadows.after(model, decoded.items, decoded.parameters, outputs)
        except Exception as exc:
            error = exc
            response = call.failed(exc)
        else:
            response = call.succeeded(response)
        if call.span is not None:
            assert tracing is not None  # only tracing gives a call a span
            tracing.finish(call, response.status_code, error, time.monotonic())
        return response

    def _admit(self, call: Call) -> float:
        """Stages 1 and 2; by when the body must have been read (``time.monotonic()``)."""
        if self.state.draining:
            raise ShuttingDown("server is shutting down")
        headers = call.headers
        if headers.timeout_ms is not None:
            call.requested_ms = requested_timeout_ms(headers.timeout_ms)
        call.adapter.check(headers, call.name)
        if call.name is not None:
            model = call.model = self.resolve(call, call.name)  # known: its outcome counts
            check_ready(model, self._shown)
            read_ms = timeout_ms(model.config.timeout_ms, call.requested_ms)
        else:  # the body names the model: read it within the longest deadline it could have
            read_ms = timeout_ms(self._longest_timeout_ms(call.arrived_s), call.requested_ms)
        return call.arrived_s + read_ms / 1000.0

    def _named(self, call: Call, decoded: Decoded) -> ServedModel:
        """The request's model, looked up now if only its body names it."""
        if call.model is None:
            if decoded.model is None:  # an adapter's bug, not the client's
                raise RuntimeError(f"{type(call.adapter).__name__} decoded a request naming no model")
            call.model = self.resolve(call, decoded.model)
            check_ready(call.model, self._shown)
        return call.model

    def resolve(self, call: Call, name: str) -> ServedModel:
        """The version of ``name`` that serves ``call`` (``routing.py``)."""
        return self.state.router.resolve(name, call.version, call.headers.routing_key)

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

    async def _run(self, call: Call, decoded: Decoded, disconnected: Disconnected, *,
                   large: bool) -> tuple[ServedModel, list[Any]]:
        """Stages 5 and 6 on the version that serves ``call.model``'s name now (``_serving``);
        that version, and the rows' outputs."""
        items = decoded.items
        while True:
            model = call.model = self._serving(call.model)
            timeout_s, deadline_s = call.deadline(model)
            try:
                backend = model.backend
                if backend.preprocess_in_thread or large:
                    # don't decode what could not start in time (the batcher checks again as it
                    # admits the rows: light, small requests are checked there only)
                    backlog = self._off_loop.backlog(model) if backend.preprocess_in_thread else None
                    model.batcher.check_admission(len(items), deadline_s, ahead=backlog)
                    parameters = backend.parse_parameters(decoded.parameters)
                    rows = await self._off_loop.preprocess(model, items, parameters, deadline_s,
                                                           disconnected)
                else:
                    rows = preprocess_items(backend, items, backend.parse_parameters(decoded.parameters),
                                            None)
                call.preprocessed_s = time.monotonic()
                if model.batcher.closing:
                    continue  # reloaded while preprocessing: _serving finds the new version
                call.entry = model.batcher.admit(rows, timeout_s=timeout_s, deadline_s=deadline_s,
                                                 disconnected=disconnected)
                if call.span is not None:  # its batches' spans link to it
                    call.entry.span = call.span
                return model, await model.batcher.wait(call.entry)
            except ShuttingDown:  # counted by the batcher that refused or dropped the rows
                if self._successor(model) is None:
                    raise

    def _serving(self, model: ServedModel | None) -> ServedModel:
        """``model``, or the version that succeeded it in a reload (management API) when that
        retired ``model`` while a request was admitted, preprocessed or queued; a 503 when none
        does (unloaded), or the server is draining. The one place a request changes versions."""
        assert model is not None  # named before its rows run
        if not model.batcher.closing:
            return model
        successor = self._successor(model)
        if successor is None:
            model.metrics.rejected["shutdown"].inc()
            raise ShuttingDown(f"model '{model.config.name}' is shutting down")
        return successor

    def _successor(self, model: ServedModel) -> ServedModel | None:
        if self.state.draining:
            return None
        return self.state.router.successor(model)


def check_ready(model: ServedModel, shown: PublicPaths) -> None:
    """Refuse (503) a model that is not ready: loading, failed or unloaded."""
    if not model.ready:
        raise not_ready(model, shown)


def not_ready(model: ServedModel, shown: PublicPaths) -> ModelNotReady:
    """The 503 for a model that is not ready, saying why (the paths as ``/models`` shows them)."""
    status = shown.status(model)
    return ModelNotReady(f"model '{model.config.name}' is {status['state']}"
                         + (f": {status['reason']}" if status["reason"] else ""))
