"""OpenTelemetry traces of requests and batches (``--tracing``; off by default).

Spans are made from the timestamps a request's lifecycle already records (``lifecycle.Call``):
tracing times nothing of its own. Per request, a SERVER span continuing the caller's W3C context
(``traceparent``/``tracestate``), begun when the request arrived and ended when it was answered,
with a child span per stage it went through, named as in ``metrics.STAGES`` (Triton's names).
Per batch, one span (a child of the first traced request it ran, so it shows in that trace)
linking every traced request it ran; each request's ``compute_infer`` span links back to its
batches. A viewer shows who shared a batch, and how long each waited for it.

Configured by OpenTelemetry's own variables, read by its SDK: ``OTEL_SERVICE_NAME`` and
``OTEL_RESOURCE_ATTRIBUTES`` (the resource; ``service.name`` is ``batchserve`` unless they set
one), ``OTEL_TRACES_SAMPLER``/``_ARG`` (default ``parentbased_always_on``; a caller's sampled
context is always followed by the parent-based samplers), ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``_TRACES_ENDPOINT``) and ``OTEL_EXPORTER_OTLP_PROTOCOL`` (``http/protobuf``; ``grpc`` when
opentelemetry-exporter-otlp-proto-grpc is installed), ``OTEL_BSP_MAX_QUEUE_SIZE``,
``OTEL_BSP_SCHEDULE_DELAY`` and ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE`` (the export queue, below).

Spans are exported from a thread of their own (``ExportQueue``), never on the event loop; when
its bounded queue is full a span is dropped and counted
(``batchserve_trace_spans_dropped_total``), and the request goes on as if untraced.

This module imports OpenTelemetry: it is imported only when tracing is on (``app.py``), and
OpenTelemetry is the ``tracing`` extra.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from random import getrandbits
from typing import TYPE_CHECKING

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, Sampler, TraceIdRatioBased
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import Counter

if TYPE_CHECKING:
    from batchserve.execution import Batch
    from batchserve.lifecycle import Call

log = logging.getLogger(__name__)

_PROPAGATOR = TraceContextTextMapPropagator()
_LOW_64 = (1 << 64) - 1


class ExportQueue(SpanProcessor):
    """Ended spans, exported in batches from a thread: a bounded queue that drops (and counts)
    what it can't hold rather than make a request wait. Sized by the SDK's batch processor's
    variables (``OTEL_BSP_*``), with its defaults."""

    def __init__(self, exporter: SpanExporter, dropped: Counter) -> None:
        self._exporter = exporter
        self._dropped = dropped
        self._max, self._batch, self._delay_s = queue_sizes()
        self._spans: collections.deque[ReadableSpan] = collections.deque()
        self._wake = threading.Event()
        self._flushed = threading.Condition()
        self._exported = 0  # spans handed to the exporter, for force_flush
        self._queued = 0  # spans ever queued
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="batchserve-trace-export", daemon=True)
        self._thread.start()

    def on_end(self, span: ReadableSpan) -> None:
        context = span.context
        if context is None or not context.trace_flags.sampled:
            return
        if len(self._spans) >= self._max or self._stopping:
            self._dropped.inc()
            return
        self._spans.append(span)  # deque appends are thread-safe
        self._queued += 1
        if len(self._spans) >= self._batch:
            self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait(self._delay_s)
            self._wake.clear()
            self._export_all()
            if self._stopping:
                return

    def _export_all(self) -> None:
        while self._spans:
            batch = [self._spans.popleft() for _ in range(min(self._batch, len(self._spans)))]
            try:
                self._exporter.export(batch)
            except Exception:  # an exporter's failure must not end the thread
                log.exception("exporting %d spans failed", len(batch))
            with self._flushed:
                self._exported += len(batch)
                self._flushed.notify_all()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Export what is queued now; whether it went within ``timeout_millis``."""
        target = self._queued
        self._wake.set()
        with self._flushed:
            return self._flushed.wait_for(lambda: self._exported >= target, timeout_millis / 1000)

    def shutdown(self) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout=10)
        self._exporter.shutdown()


class ChosenIds(RandomIdGenerator):
    """Random ids, except a root span's trace id when ``Tracing.begin`` chose it to decide the
    span's sampling before making it (``chosen``; event loop only)."""

    def __init__(self) -> None:
        self.chosen: int | None = None

    def generate_trace_id(self) -> int:
        chosen, self.chosen = self.chosen, None
        return chosen if chosen is not None else super().generate_trace_id()


class Tracing:
    """One process's tracer: request spans begun and finished from a ``Call``, batch spans from
    a batch's slices."""

    def __init__(self, provider: TracerProvider, ids: ChosenIds, root_bound: int,
                 worker: int | None) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("batchserve")
        self._ids = ids
        self._root_bound = root_bound  # a root trace id whose low 64 bits are below it is sampled
        self.worker = worker
        # a monotonic instant plus this is the epoch nanoseconds OpenTelemetry takes
        self._epoch_ns = time.time_ns() - time.monotonic_ns()

    def ns(self, monotonic_s: float) -> int:
        return int(monotonic_s * 1e9) + self._epoch_ns

    def begin(self, call: Call) -> None:
        """Start ``call``'s span at its arrival, continuing the caller's context; ``call.span``
        stays ``None`` when the sampler leaves it out. A request without a caller's context is
        decided by its trace id before any span is made (one random number, where an unsampled
        span costs microseconds): the same decision as the sampler's, which makes it again."""
        parent = None
        headers = call.headers
        if headers.traceparent is not None:
            carrier = {"traceparent": headers.traceparent}
            if headers.tracestate is not None:
                carrier["tracestate"] = headers.tracestate
            parent = _PROPAGATOR.extract(carrier)
        else:
            trace_id = getrandbits(128)  # as the SDK's RandomIdGenerator draws one
            if trace_id & _LOW_64 >= self._root_bound or not trace_id:
                return
            self._ids.chosen = trace_id
        protocol = call.adapter.protocol
        if protocol == "grpc":  # OpenTelemetry's RPC conventions: the span is named service/method
            name = call.path.lstrip("/")
            service, _, method = name.partition("/")
            attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method,
                          "batchserve.protocol": protocol}
        else:
            name = f"{call.method} {call.path}"
            attributes = {"http.request.method": call.method, "url.path": call.path,
                          "batchserve.protocol": protocol}
        span = self.tracer.start_span(name, context=parent, kind=SpanKind.SERVER,
                                      start_time=self.ns(call.arrived_s), attributes=attributes)
        if span.is_recording():
            call.span = span
            call.trace_token = otel_context.attach(trace.set_span_in_context(span))  # for the logs

    def finish(self, call: Call, status: int, error: BaseException | None, answered_s: float) -> None:
        """End ``call``'s span at ``answered_s``: an event at the start of each stage it went
        through (Triton's way: a span per stage would cost several times more), and a link to
        each batch that ran its rows."""
        span = call.span
        assert span is not None
        attributes: dict[str, str | int] = {"http.response.status_code": status}
        model = call.model
        if model is not None:
            attributes["batchserve.model"] = model.config.name
            if model.config.version is not None:  # the version the request resolved to
                attributes["batchserve.model.version"] = model.config.version
            if model.config.sha256 is not None:
                attributes["batchserve.model.sha256"] = model.config.sha256
        if call.items:
            attributes["batchserve.items"] = call.items
        if self.worker is not None:
            attributes["batchserve.worker"] = self.worker
        if error is not None:
            attributes["error.type"] = type(error).__name__
            span.set_status(Status(StatusCode.ERROR, str(error)[:200]))
        span.set_attributes(attributes)
        for stage, start_s, _ in call.stages(answered_s):
            span.add_event(stage, timestamp=self.ns(start_s))
        entry = call.entry
        if entry is not None and entry.batch_spans:
            for batch in entry.batch_spans:
                span.add_link(batch)
        span.end(end_time=self.ns(answered_s))
        otel_context.detach(call.trace_token)

    def batch(self, batch: Batch, model: str, trigger: str, place: str, device: str,
              ended_s: float) -> None:
        """A span for ``batch`` of ``model`` (its ``ModelConfig.key``), which ran from
        ``batch.taken_s`` to ``ended_s``, when it ran a traced request: a child of the first,
        linking each (and each links back to it)."""
        traced = [request for request, _, _ in batch.slices if request.span is not None]
        if not traced:
            return
        name, _, version = model.partition(":")  # a version's key is name:version
        attributes: dict[str, str | int] = {
            "batchserve.model": name, "batchserve.batch.size": len(batch.rows),
            "batchserve.batch.trigger": trigger, "batchserve.batch.place": place,
            "batchserve.device": device}
        if version:
            attributes["batchserve.model.version"] = version
        span = self.tracer.start_span(
            "batch", context=trace.set_span_in_context(traced[0].span), start_time=self.ns(batch.taken_s),
            links=[Link(request.span.get_span_context()) for request in traced], attributes=attributes)
        span.end(end_time=self.ns(ended_s))
        context = span.get_span_context()
        for request in traced:
            if request.batch_spans is None:
                request.batch_spans = []
            request.batch_spans.append(context)

    def shutdown(self) -> None:
        self.provider.shutdown()


def current_ids() -> tuple[str, str] | None:
    """The trace and span ids (hex) of the span current in this task, if one is recording: the
    request's, while it is served (``Tracing.begin``)."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def setup_tracing(dropped: Counter, worker: int | None = None) -> Tracing:
    """The process's ``Tracing``, exporting as OpenTelemetry's variables say; a ``ValueError``
    naming the variable when they ask for what can't be done."""
    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "batchserve"}))
    sampler, root_bound = sampler_from_env()
    ids = ChosenIds()
    provider = TracerProvider(resource=resource, sampler=sampler, id_generator=ids)
    provider.add_span_processor(ExportQueue(_exporter(), dropped))
    return Tracing(provider, ids, root_bound, worker)


SAMPLERS = ("always_on", "always_off", "traceidratio", "parentbased_always_on",
            "parentbased_always_off", "parentbased_traceidratio")


def sampler_from_env() -> tuple[Sampler, int]:
    """The sampler ``OTEL_TRACES_SAMPLER`` and ``_ARG`` name (the specification's six, read as the
    SDK reads them), and the bound below which a root trace id's low 64 bits are sampled."""
    name = os.environ.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    if name not in SAMPLERS:
        raise ValueError(f"OTEL_TRACES_SAMPLER={name!r} is not supported; use one of {', '.join(SAMPLERS)}")
    ratio = 1.0
    if name.endswith("traceidratio"):
        raw = os.environ.get("OTEL_TRACES_SAMPLER_ARG", "1.0")
        try:
            ratio = float(raw)
        except ValueError:
            ratio = -1.0
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"OTEL_TRACES_SAMPLER_ARG must be a ratio from 0 to 1, not {raw!r}")
    root: Sampler
    if name.endswith("always_on"):
        root, bound = ALWAYS_ON, 1 << 64
    elif name.endswith("always_off"):
        root, bound = ALWAYS_OFF, 0
    else:
        ratio_sampler = TraceIdRatioBased(ratio)
        root, bound = ratio_sampler, ratio_sampler.bound
    return (ParentBased(root) if name.startswith("parentbased_") else root), bound


def check_environment() -> None:
    """A ``ValueError`` naming the ``OTEL_*`` variable that asks for what can't be done."""
    _exporter().shutdown()
    queue_sizes()
    sampler_from_env()


def queue_sizes() -> tuple[int, int, float]:
    """The export queue's size, its export batch and the wait between exports (seconds)."""
    most = _env_int("OTEL_BSP_MAX_QUEUE_SIZE", 2048)
    return (most, min(_env_int("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512), most),
            _env_int("OTEL_BSP_SCHEDULE_DELAY", 5000) / 1000.0)


def _exporter() -> SpanExporter:
    protocol = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf")
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found]
                OTLPSpanExporter as GrpcExporter,
            )
        except ImportError:
            raise ValueError("OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs the package "
                             "opentelemetry-exporter-otlp-proto-grpc; or use http/protobuf") from None
        exporter: SpanExporter = GrpcExporter()
        return exporter
    raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported; "
                     "use http/protobuf or grpc")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{name} must be a positive integer, not {value!r}") from None
    if number <= 0:
        raise ValueError(f"{name} must be a positive integer, not {value!r}")
    return number

