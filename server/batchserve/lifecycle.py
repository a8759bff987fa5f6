"""One inference request's lifecycle: the one object a request is, from its arrival to its answer.

A request moves through named stages, and the lifecycle (``Call``) records a monotonic timestamp
at each boundary (a few floats; nothing else is timed on the hot path):

====================  =========================================================================
stage                 from → to
====================  =========================================================================
``body``              arrival → the whole body read
``decode``            → the protocol's adapter turned it into items
``compute_input``     → preprocessed into rows (waiting for a preprocessing slot included)
``queue``             → the request's first row dispatched in a batch
``compute_infer``     → its last batch computed
``compute_output``    → its response encoded
====================  =========================================================================

The names are Triton's (``nv_inference_queue_duration_us``, ``compute_input``, ``compute_infer``,
``compute_output``) with batchserve's two front stages added. Metrics read them once, when the
request succeeds (``batchserve_stage_duration_seconds``); traces can hang spans on them.

A ``Call`` owns its outcome: ``succeeded`` and ``failed`` count it exactly once, and its queue
entry (``execution.Request``) leaves the batcher's watch by itself when answered, failed or
abandoned, so no caller has a cleanup to remember. Protocols are adapters (``Adapter``) that only
decode a body into items and encode outputs (or an error) into their wire format.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.responses import Response

from batchserve.errors import BatchserveError
from batchserve.execution import Request
from batchserve.headers import RequestHeaders
from batchserve.metrics import STAGES
from batchserve.registry import ServedModel

log = logging.getLogger(__name__)

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

    protocol = ""
    """Its name in traces (``batchserve.protocol``): ``predict``, ``v2``, ``openai``."""

    def check(self, headers: RequestHeaders, model: str | None) -> None:  # noqa: B027 - optional
        """Refuse, before the body is read, what the headers already show cannot be served."""

    @abstractmethod
    def decodes_on_loop(self, headers: RequestHeaders, size: int) -> bool:
        """Whether decoding a body of ``size`` bytes is light enough for the event loop; when
        not, ``decode`` runs on a worker thread."""

    @abstractmethod
    def decode(self, body: bytes, call: Call) -> Decoded:
        """The items of ``body``; ``call.model`` is the model the path names, if it does."""

    @abstractmethod
    def encode(self, model: ServedModel, decoded: Decoded, outputs: list[Any]) -> Response:
        """The response to a request whose rows all ran."""

    @abstractmethod
    def error(self, exc: BatchserveError) -> Response:
        """The response to a request that failed."""


class Call:
    """One inference request: what it is (adapter, path, headers), the model serving it from
    when that is known, its queue entry once queued, and when it passed each stage."""

    __slots__ = ("adapter", "arrived_s", "body_s", "decoded_s", "entry", "headers", "items",
                 "method", "model", "name", "path", "preprocessed_s", "query", "requested_ms", "span",
                 "trace_token", "version")

    def __init__(self, adapter: Adapter, name: str | None, headers: RequestHeaders, *,
                 method: str, path: str, query: bytes, version: str | None = None) -> None:
        self.arrived_s = time.monotonic()
        self.adapter = adapter
        self.name = name  # the model the path names, if any
        self.version = version  # the version of it the path names, if any
        self.headers = headers
        self.method = method
        self.path = path
        self.query = query  # the raw query string
        self.model: ServedModel | None = None
        self.requested_ms: float | None = None  # X-Request-Timeout-Ms
        self.entry: Request | None = None  # its rows in the model's batcher, once queued
        self.body_s = self.decoded_s = self.preprocessed_s = 0.0
        self.items = 0  # how many it has, once decoded
        self.span: Any = None  # its trace span, when tracing is on and it is sampled (tracing.py)
        self.trace_token: Any = None  # the span made current while it is served, for the logs

    def deadline(self, model: ServedModel) -> tuple[float, float]:
        """The request's timeout on ``model`` and its deadline (``time.monotonic()``)."""
        timeout_s = timeout_ms(model.config.timeout_ms, self.requested_ms) / 1000.0
        return timeout_s, self.arrived_s + timeout_s

    def stage_ends(self, answered_s: float) -> tuple[float, float, float, float, float, float]:
        """When each of ``metrics.STAGES`` ended (``time.monotonic()``), for a request answered
        at ``answered_s``; 0 for a stage it never finished (it failed in or before it)."""
        entry = self.entry
        if entry is None:
            return self.body_s, self.decoded_s, self.preprocessed_s, 0.0, 0.0, answered_s
        return (self.body_s, self.decoded_s, self.preprocessed_s, entry.dispatched_s,
                entry.computed_s, answered_s)

    def stages(self, answered_s: float) -> Iterator[tuple[str, float, float]]:
        """Each of ``metrics.STAGES`` the request went through, with its start and end: all of
        them for an answer, those before the one it failed in (that one ending at
        ``answered_s``) for an error."""
        start_s = self.arrived_s
        for stage, end_s in zip(STAGES, self.stage_ends(answered_s), strict=True):
            if not end_s:  # the stage it failed in
                yield stage, start_s, answered_s
                return
            yield stage, start_s, end_s
            start_s = end_s

    def succeeded(self, response: Response) -> Response:
        """Count the answer (a 200) and its stages; ``response`` itself."""
        model = self.model
        assert model is not None  # a request that ran had a model
        entry = self.entry
        assert entry is not None  # a request that succeeded was queued
        model.metrics.request_succeeded((self.arrived_s, self.body_s, self.decoded_s,
                                         self.preprocessed_s, entry.dispatched_s, entry.computed_s,
                                         time.monotonic()))
        return response

    def failed(self, exc: Exception) -> Response:
        """The response to ``exc``, counted for the request's model if known; an error that is not
        a ``BatchserveError`` is logged, and answered as a 500."""
        if not isinstance(exc, BatchserveError):
            log.error("unexpected error serving %s %s (model %s)", self.method, self.path,
                      None if self.model is None else self.model.config.name, exc_info=exc)
            exc = BatchserveError("internal error; see the server log")
        if self.model is not None:
            self.model.metrics.count_request(exc.status)
        return self.adapter.error(exc)


def timeout_ms(model_ms: float, requested_ms: float | None) -> float:
    """A request's time from its arrival: the model's ``timeout_ms``, or the header's where that
    is shorter (the header can't lengthen it)."""
    return model_ms if requested_ms is None or requested_ms >= model_ms else requested_ms
