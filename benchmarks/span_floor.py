"""The floor under tracing's cost: what OpenTelemetry's SDK and its OTLP encoder take per span,
in-process, with no server, and what that floor is per request at a sampling ratio.

batchserve makes, per traced request, one SERVER span with seven stage events and a link (as
``Tracing.finish`` does), and per batch that ran a traced request one ``batch`` span linking
them (``Tracing.batch``); the export thread encodes them with the SDK's OTLP protobuf encoder.
This script times those three things alone (CPU time of this process, ``time.process_time``):

- ``request span``: start, attributes, seven events, a link, end, handed to a processor that
  keeps it (as batchserve's export queue does);
- ``batch span``: start with one link (one traced request a batch, as at low ratios), end;
- ``encode``: ``encode_spans`` + ``SerializeToString`` of 512 spans (the batch processor's
  default export size), per span.

Then, for a model whose request costs ``REQUEST_US`` of server CPU and whose batches hold
``BATCH_ROWS`` one-row requests, the floor per request at ``RATIO``: RATIO x (request span +
encode) + the batch spans a request's share of batches make (1 - (1 - RATIO)^BATCH_ROWS of the
batches hold a traced request) x (batch span + encode), as a share of REQUEST_US. Whatever the
server does around the SDK comes on top of this floor.

Usage: .venv/bin/python benchmarks/span_floor.py   (ROUNDS, SPANS, RATIO, REQUEST_US, BATCH_ROWS)
"""

from __future__ import annotations

import functools
import os
import statistics
import time
from collections.abc import Callable

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.trace import Link, SpanKind

ROUNDS = int(os.environ.get("ROUNDS", "5"))
SPANS = int(os.environ.get("SPANS", "5000"))
RATIO = float(os.environ.get("RATIO", "0.01"))
REQUEST_US = float(os.environ.get("REQUEST_US", "53.5"))
"""diabetes, one row a request, server CPU per request untraced (benchmarks/README.md, tracing)."""
BATCH_ROWS = int(os.environ.get("BATCH_ROWS", "30"))
STAGES = ["body", "decode", "preprocess", "queue", "compute_infer", "compute_output", "encode"]


class Keep(SpanProcessor):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)


def encode(spans: list[ReadableSpan]) -> bytes:
    encoded: bytes = encode_spans(spans).SerializeToString()
    return encoded


def cpu_us_each(work: Callable[[], object], count: int) -> float:
    start = time.process_time()
    for _ in range(count):
        work()
    return (time.process_time() - start) / count * 1e6


def main() -> None:
    provider = TracerProvider()
    keep = Keep()
    provider.add_span_processor(keep)
    tracer = provider.get_tracer("batchserve")
    now = time.time_ns()

    def request_span() -> None:
        span = tracer.start_span("POST /predict/diabetes", kind=SpanKind.SERVER, start_time=now,
                                 attributes={"http.request.method": "POST", "url.path": "/predict/diabetes",
                                             "batchserve.protocol": "predict"})
        span.set_attributes({"http.response.status_code": 200, "batchserve.model": "diabetes",
                             "batchserve.items": 1})
        for index, stage in enumerate(STAGES):
            span.add_event(stage, timestamp=now + index * 1000)
        span.add_link(span.get_span_context())
        span.end(end_time=now + 10_000)

    parent = tracer.start_span("parent")
    context = trace.set_span_in_context(parent)
    link = Link(parent.get_span_context())

    def batch_span() -> None:
        attributes: dict[str, str | int] = {
            "batchserve.model": "diabetes", "batchserve.batch.size": BATCH_ROWS,
            "batchserve.batch.trigger": "idle", "batchserve.batch.place": "loop", "batchserve.device": "cpu"}
        span = tracer.start_span("batch", context=context, start_time=now, links=[link],
                                 attributes=attributes)
        span.end(end_time=now + 5_000)

    rows: dict[str, list[float]] = {"request span": [], "batch span": [], "encode (request spans)": [],
                                    "encode (batch spans)": []}
    for _ in range(ROUNDS):
        keep.spans.clear()
        rows["request span"].append(cpu_us_each(request_span, SPANS))
        requests = keep.spans[:512]
        keep.spans.clear()
        rows["batch span"].append(cpu_us_each(batch_span, SPANS))
        batches = keep.spans[:512]
        for name, spans in (("encode (request spans)", requests), ("encode (batch spans)", batches)):
            rounds = max(1, SPANS // 512)
            rows[name].append(cpu_us_each(functools.partial(encode, spans), rounds) / len(spans))
    medians = {name: statistics.median(values) for name, values in rows.items()}
    print(f"{ROUNDS} rounds of {SPANS} spans; CPU µs per span, median (min-max):")
    for name, values in rows.items():
        print(f"  {name:24s} {medians[name]:7.1f}  ({min(values):.1f}-{max(values):.1f})")
    batch_share = (1 - (1 - RATIO) ** BATCH_ROWS) / BATCH_ROWS
    per_request = (RATIO * (medians["request span"] + medians["encode (request spans)"])
                   + batch_share * (medians["batch span"] + medians["encode (batch spans)"]))
    print(f"at {RATIO:.0%} sampled, {BATCH_ROWS}-row batches: {RATIO:.4f} request spans and "
          f"{batch_share:.4f} batch spans a request")
    fewer = 1 - REQUEST_US / (REQUEST_US + per_request)
    print(f"floor: {per_request:.2f} µs a request = {per_request / REQUEST_US:.1%} of a {REQUEST_US} µs "
          f"request (fewer requests/s on a saturated core: {fewer:.1%})")


if __name__ == "__main__":
    main()
