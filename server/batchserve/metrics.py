"""Prometheus metrics, one registry per app (no module-level singletons).

Every series is labelled by ``model`` and ``version``: a model's version (``versions.py``), or
empty for a model without versions, whose series are shown without the label (Prometheus reads
an empty label as none: ``metrics_bulk.without_empty_version``), as they were before
versions. Hot-path cost is kept small by binding each model's children once
(``ModelMetrics``) instead of calling ``.labels()`` per request.

Two modes, fixed when the process starts:

- one process (``PROMETHEUS_MULTIPROC_DIR`` unset): the values live in this
  process and the gauges that describe state (queued rows, readiness) are read
  from it at scrape time (``set_function``);
- a worker of a multi-process server (the supervisor sets
  ``PROMETHEUS_MULTIPROC_DIR`` in its environment): prometheus-client writes
  every value to this process's mmap files in that directory, and a scrape of
  any worker merges every worker's files (``batchserve/metrics_multiprocess.py``).
  Files hold values, not functions, so the state gauges are written by
  ``Metrics.refresh`` instead: at each scrape of the worker that answers, and
  every ``REFRESH_INTERVAL_S`` (the other workers' values are that stale at most).
  One ``Metrics`` per process in this mode: two would write the same keys.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values

from batchserve.load import PLACEMENTS
from batchserve.metrics_bulk import BulkHistogram

STAGES = ("body", "decode", "compute_input", "queue", "compute_infer", "compute_output")
"""The stages a request's time is split into, in order (``batchserve/lifecycle.py``)."""

LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)
REJECT_REASONS = ("queue_full", "overloaded", "deadline", "cancelled", "shutdown")
DISPATCH_TRIGGERS = ("full", "timer", "idle")
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus-client's multiprocess directory: set in a worker's environment before it starts."""
REFRESH_INTERVAL_S = 0.25
"""How often a worker writes its state gauges to its files (multi-process mode)."""


def multiprocess_dir() -> Path | None:
    """The multiprocess directory when this process writes its metrics there, else ``None``.

    prometheus-client picks where values live once, when it is first imported: a variable set
    after that would leave this process's values out of every scrape, so it is refused."""
    path = os.environ.get(MULTIPROC_DIR_ENV)
    if not path:
        return None
    if not getattr(values.ValueClass, "_multiprocess", False):
        raise RuntimeError(
            f"{MULTIPROC_DIR_ENV} was set after prometheus_client was imported, so this process's "
            "metrics would not be written there; set it in the environment the process starts with")
    return Path(path)


def batch_size_buckets(max_batch_size: int) -> tuple[float, ...]:
    """1, 2, 4, ... up to the first power of two that holds ``max_batch_size``."""
    buckets = [1]
    while buckets[-1] < max_batch_size:
        buckets.append(buckets[-1] * 2)
    return tuple(float(b) for b in buckets)


class Metrics:
    """All batchserve metric families, registered on ``registry``."""

    def __init__(self, *, max_batch_size: int, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.multiprocess_dir = multiprocess_dir()
        """Where this process's values are written (multi-process mode), else ``None``."""
        self._models: dict[tuple[str, str], ModelMetrics] = {}
        r = self.registry
        self.requests = Counter(
            "batchserve_requests", "Requests answered, by HTTP status code.",
            ["model", "version", "code"], registry=r,
        )
        # observed for every request: in bulk (metrics_bulk.py), shown as histograms
        self.request_duration = BulkHistogram(
            "batchserve_request_duration_seconds", "End-to-end time of successful requests.",
            ["model", "version"], LATENCY_BUCKETS_S, r,
        )
        self.queue_wait = BulkHistogram(
            "batchserve_queue_wait_seconds", "Time from admission to the dispatch of a request's first row.",
            ["model", "version"], LATENCY_BUCKETS_S, r,
        )
        self.batch_size = Histogram(
            "batchserve_batch_size", "Rows per call of predict_batch.",
            ["model", "version"], buckets=batch_size_buckets(max_batch_size), registry=r,
        )
        self.batch_duration = Histogram(
            "batchserve_batch_duration_seconds", "Time spent in predict_batch per batch.",
            ["model", "version"], buckets=LATENCY_BUCKETS_S, registry=r,
        )
        self.queue_rows = Gauge(
            "batchserve_queue_rows", "Rows admitted and not yet dispatched.", ["model", "version"],
            registry=r,
            multiprocess_mode="livesum",  # the server's queue: every live worker's rows
        )
        self.rejected = Counter(
            "batchserve_rejected", "Requests refused or dropped before their rows ran, by reason.",
            ["model", "version", "reason"], registry=r,
        )
        self.dispatch = Counter(
            "batchserve_dispatch", "Batches dispatched, by what made them go.",
            ["model", "version", "trigger"], registry=r,
        )
        self.placement = Counter(
            "batchserve_batch_placement", "Batches by where they ran (the event loop or the model's "
            "thread) and why (batchserve/load.py, PLACEMENTS).",
            ["model", "version", "place", "reason"], registry=r,
        )
        self.stage_duration = BulkHistogram(
            "batchserve_stage_duration_seconds",
            "Time of successful requests in each stage: body (read), decode, compute_input "
            "(preprocessing), queue, compute_infer (batches), compute_output (encoding).",
            ["model", "version", "stage"], LATENCY_BUCKETS_S, r,
        )
        self.trace_spans_dropped = Counter(
            "batchserve_trace_spans_dropped", "Trace spans dropped because the export queue was "
            "full (OTEL_BSP_MAX_QUEUE_SIZE): the collector is slower than the spans come.",
            registry=r,
        )
        self.padding_ratio = Histogram(
            "batchserve_padding_ratio", "Padding tokens / all tokens per batch (text backends).",
            ["model", "version"], buckets=(0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
            registry=r,
        )
        self.model_ready = Gauge(
            "batchserve_model_ready", "1 when the model is loaded, warmed and its loop healthy.",
            ["model", "version"], registry=r,
            multiprocess_mode="livemin",  # ready only when ready in every live worker
        )
        self.device_memory_peak = Gauge(
            "batchserve_device_memory_peak_bytes",
            "torch.cuda.max_memory_allocated on the model's GPU after its latest batch: the peak of "
            "this process's tensors on that device (models sharing it share the figure).",
            ["model", "version"], registry=r,
            multiprocess_mode="livemax",  # each worker holds its own copy: the largest one's peak
        )

    def for_model(self, model: str, version: str | None = None) -> ModelMetrics:
        """The children of ``model``'s ``version`` (``None``: a model without versions, whose
        series show no ``version`` label), bound once: every load of it shares them."""
        key = (model, version or "")
        children = self._models.get(key)
        if children is None:
            children = self._models[key] = ModelMetrics(self, *key)
        return children

    def refresh(self) -> None:
        """Write every model's state gauges to this process's files (multi-process mode; a
        no-op otherwise, where they are read at scrape time)."""
        for children in self._models.values():
            children.refresh()


class ModelMetrics:
    """The children of every family for one model, bound once."""

    def __init__(self, metrics: Metrics, model: str, version: str = "") -> None:
        self._metrics = metrics
        self._model = model
        self._version = version
        self._codes: dict[int, Counter] = {}
        self._succeeded: list[Sequence[float]] = []  # this loop turn's 200s, not yet counted
        self.request_duration = metrics.request_duration.labels(model, version)
        self.queue_wait = metrics.queue_wait.labels(model, version)
        self.batch_size = metrics.batch_size.labels(model, version)
        self.batch_duration = metrics.batch_duration.labels(model, version)
        self.model_ready = metrics.model_ready.labels(model, version)
        self.padding_ratio = metrics.padding_ratio.labels(model, version)
        self.rejected = {r: metrics.rejected.labels(model, version, r) for r in REJECT_REASONS}
        self.dispatch = {t: metrics.dispatch.labels(model, version, t) for t in DISPATCH_TRIGGERS}
        self.placement = {p: metrics.placement.labels(model, version, *p) for p in PLACEMENTS}
        self.stages = [metrics.stage_duration.labels(model, version, stage) for stage in STAGES]
        self.queue_rows = metrics.queue_rows.labels(model, version)
        self._watched: list[tuple[Gauge, Callable[[], float]]] = []
        self._device_memory_peak: Gauge | None = None  # bound on a GPU model's first batch
        self.model_ready.set(0)

    def set_device_memory_peak(self, peak_bytes: int) -> None:
        """A GPU model's device memory peak so far (models on a CPU never show the series)."""
        if self._device_memory_peak is None:
            self._device_memory_peak = self._metrics.device_memory_peak.labels(self._model, self._version)
        self._device_memory_peak.set(peak_bytes)

    def watch_queue(self, rows: Callable[[], float]) -> None:
        """Report ``rows()`` as the queued-rows gauge, read at scrape time (free on the hot path);
        the registry binds it to the version that serves the model."""
        self._watch(self.queue_rows, rows)

    def watch_ready(self, ready: Callable[[], float]) -> None:
        """Report ``ready()`` (1 or 0) as the model's readiness gauge, read at scrape time."""
        self._watch(self.model_ready, ready)

    def _watch(self, gauge: Gauge, read: Callable[[], float]) -> None:
        if self._metrics.multiprocess_dir is None:
            gauge.set_function(read)
            return
        # A file holds a value, not a function: refresh() writes it (and now, so it is true at once).
        self._watched = [(g, f) for g, f in self._watched if g is not gauge] + [(gauge, read)]
        gauge.set(read())

    def refresh(self) -> None:
        """Write the watched gauges' values now (multi-process mode only watches this way)."""
        for gauge, read in self._watched:
            gauge.set(read())

    def request_succeeded(self, instants: Sequence[float]) -> None:
        """A 200: ``instants`` are when it arrived, then when each of ``STAGES`` ended (the last:
        its answer), on the ``time.monotonic()`` clock. It is counted, with every other success of
        this event loop turn, in a callback at its end: one counter add, and its duration and
        stages observed into the bulk histograms column by column, for the ~batch of requests a
        batch's delivery resumes. The callback runs before the loop next reads a socket, so a
        scrape that follows an answer sees it counted."""
        if not self._succeeded:
            asyncio.get_running_loop().call_soon(self._count_succeeded)
        self._succeeded.append(instants)

    def _count_succeeded(self) -> None:
        succeeded, self._succeeded = self._succeeded, []
        self.count_request(200, len(succeeded))
        self.request_duration.observe_all([instants[-1] - instants[0] for instants in succeeded])
        self.request_duration.flush()
        for stage, histogram in enumerate(self.stages):
            histogram.observe_all([instants[stage + 1] - instants[stage] for instants in succeeded])
            histogram.flush()

    def count_request(self, code: int, requests: int = 1) -> None:
        child = self._codes.get(code)
        if child is None:
            child = self._codes[code] = self._metrics.requests.labels(self._model, self._version, str(code))
        child.inc(requests)
