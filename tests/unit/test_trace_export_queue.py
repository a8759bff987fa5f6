"""Tracing's export queue (``tracing.ExportQueue``): spans go out from its thread, a flush waits
for what was queued, and a full queue drops and counts instead of waiting."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import pytest
from batchserve.tracing import ExportQueue
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON
from prometheus_client import CollectorRegistry, Counter

Dropped = Callable[[], float]


class Held(SpanExporter):
    """Records what it exports; blocks in ``export`` until ``release`` is set."""

    def __init__(self) -> None:
        self.exported: list[str] = []
        self.release = threading.Event()
        self.release.set()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.release.wait(10)
        self.exported.extend(span.name for span in spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.release.set()


def _queue(monkeypatch: pytest.MonkeyPatch, exporter: Held, size: int) -> tuple[ExportQueue, Dropped]:
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", str(size))
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "2")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "60000")  # only a full batch or a flush wakes it
    registry = CollectorRegistry()
    counter = Counter("dropped", "spans dropped", registry=registry)
    return ExportQueue(exporter, counter), lambda: registry.get_sample_value("dropped_total") or 0.0


def test_a_flush_exports_every_span_queued(monkeypatch: pytest.MonkeyPatch) -> None:
    exporter = Held()
    queue, dropped = _queue(monkeypatch, exporter, 100)
    provider = TracerProvider(sampler=ALWAYS_ON)
    provider.add_span_processor(queue)
    try:
        for index in range(5):
            provider.get_tracer("t").start_span(f"s{index}").end()
        assert queue.force_flush(10_000)
        assert exporter.exported == [f"s{index}" for index in range(5)]
        unsampled = TracerProvider(sampler=ALWAYS_OFF)
        unsampled.add_span_processor(queue)
        unsampled.get_tracer("t").start_span("not sampled").end()
        assert queue.force_flush(10_000) and "not sampled" not in exporter.exported
        assert dropped() == 0
    finally:
        provider.shutdown()


def test_a_full_queue_drops_and_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    exporter = Held()
    exporter.release.clear()  # the collector stalls: the first batch is held in export
    queue, dropped = _queue(monkeypatch, exporter, 4)
    provider = TracerProvider(sampler=ALWAYS_ON)
    provider.add_span_processor(queue)
    try:
        for index in range(20):
            provider.get_tracer("t").start_span(f"s{index}").end()
        # at most the held batch (2) and a full queue (4) were taken; the rest were dropped
        assert 14 <= dropped() <= 16
        exporter.release.set()
        assert queue.force_flush(10_000)
        assert len(exporter.exported) + dropped() == 20
    finally:
        provider.shutdown()
