"""OpenTelemetry traces (``--tracing``) against a real server, exported by the SDK's real OTLP
exporter over a real socket to a receiver here that decodes the protobuf (``opentelemetry-proto``;
the Collector binary can't be installed on this machine)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tests.support import free_port, running_server, sample, write_models

pytestmark = pytest.mark.slow

STAGES = ["body", "decode", "compute_input", "queue", "compute_infer", "compute_output"]


@dataclass
class Received:
    span: Span
    resource: dict[str, Any]

    @property
    def attributes(self) -> dict[str, Any]:
        return _attributes(self.span.attributes)


@dataclass
class Receiver:
    """An OTLP/HTTP traces endpoint on a free port; ``hold_s``: how long it takes to answer."""

    hold_s: float = 0.0
    spans: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                assert self.path == "/v1/traces", self.path
                request = ExportTraceServiceRequest.FromString(body)
                time.sleep(receiver.hold_s)
                with receiver.lock:
                    for resource_spans in request.resource_spans:
                        resource = _attributes(resource_spans.resource.attributes)
                        for scope in resource_spans.scope_spans:
                            receiver.spans.extend(Received(span, resource) for span in scope.spans)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def wait_for(self, done: Callable[[list[Received]], bool], timeout_s: float = 20.0) -> list[Received]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                spans = list(self.spans)
            if done(spans):
                return spans
            time.sleep(0.05)
        raise AssertionError(f"spans did not arrive in {timeout_s} s: {[s.span.name for s in spans]}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _attributes(pairs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        kind = pair.value.WhichOneof("value")
        out[pair.key] = getattr(pair.value, kind) if kind else None
    return out


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiving = Receiver()
    try:
        yield receiving
    finally:
        receiving.close()


def _env(receiver: Receiver, **more: str) -> dict[str, str]:
    return {"BATCHSERVE_TRACING": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "50", "OTEL_SERVICE_NAME": "batchserve-under-test", **more}


def _echo(tmp_path: Path, **options: Any) -> Path:
    return write_models(tmp_path / "models.toml", [
        {"name": "echo", "backend": "echo", "path": "x", "max_batch_size": 4, "max_wait_ms": 20,
         "options": {"delay_ms": 30, **options}}])


def _traceparent(index: int, sampled: bool = True) -> tuple[str, str, str]:
    trace_id, parent_id = f"{index + 1:032x}", f"{index + 1:016x}"
    return f"00-{trace_id}-{parent_id}-{'01' if sampled else '00'}", trace_id, parent_id


async def _concurrently(url: str, bodies: list[tuple[dict[str, Any], dict[str, str]]]) -> list[int]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        answers = await asyncio.gather(*(client.post("/predict", json=body, headers=headers)
                                         for body, headers in bodies))
    return [answer.status_code for answer in answers]


def test_a_request_span_continues_the_callers_trace_and_batches_link_who_shared_them(
        tmp_path: Path, receiver: Receiver) -> None:
    with running_server(_echo(tmp_path), env=_env(receiver)) as server:
        callers = [_traceparent(index) for index in range(6)]
        codes = asyncio.run(_concurrently(server.url, [
            ({"model": "echo", "inputs": [float(index)]}, {"traceparent": header})
            for index, (header, _, _) in enumerate(callers)]))
        assert codes == [200] * 6
        wanted = {trace_id for _, trace_id, _ in callers}

        def arrived(spans: list[Received]) -> bool:
            done = {s.span.trace_id.hex() for s in spans if s.span.name == "POST /predict"}
            return wanted <= done and any(s.span.name == "batch" for s in spans)
        spans = receiver.wait_for(arrived)

    by_id = {s.span.span_id: s for s in spans}
    requests = [s for s in spans if s.span.name == "POST /predict"]
    batches = [s for s in spans if s.span.name == "batch"]
    assert len(requests) == 6 and batches
    for _, trace_id, parent_id in callers:
        [request] = [r for r in requests if r.span.trace_id.hex() == trace_id]
        assert request.span.parent_span_id.hex() == parent_id  # the caller's span
        assert request.span.kind == Span.SPAN_KIND_SERVER
        assert request.resource["service.name"] == "batchserve-under-test"
        attributes = request.attributes
        assert attributes["batchserve.model"] == "echo"
        assert "batchserve.model.version" not in attributes  # a model without versions
        assert attributes["batchserve.items"] == 1
        assert attributes["batchserve.protocol"] == "predict"
        assert attributes["http.response.status_code"] == 200
        # an event at the start of each stage, in order, from the request's arrival to its answer
        events = request.span.events
        assert [event.name for event in events] == STAGES
        assert events[0].time_unix_nano == request.span.start_time_unix_nano
        for before, after in itertools.pairwise(events):
            assert before.time_unix_nano <= after.time_unix_nano
        assert events[-1].time_unix_nano <= request.span.end_time_unix_nano
        # the request links to the batches that ran it, and each of those to it
        ran_it = {link.span_id for link in request.span.links}
        assert ran_it and all(by_id[span_id].span.name == "batch" for span_id in ran_it)
        listing_it = {b.span.span_id for b in batches
                      if request.span.span_id in {link.span_id for link in b.span.links}}
        assert listing_it == ran_it
    for batch in batches:  # a batch links exactly the requests whose rows it ran (one row each)
        linked = {link.span_id for link in batch.span.links}
        assert len(linked) == batch.attributes["batchserve.batch.size"]
        assert batch.span.parent_span_id in linked  # a child of the first request it ran
        assert batch.attributes["batchserve.batch.trigger"] in {"full", "idle", "timer"}


def test_the_spans_of_a_model_with_versions_name_the_version_that_served(
        tmp_path: Path, receiver: Receiver) -> None:
    config = write_models(tmp_path / "models.toml", [
        {"name": "echo", "backend": "echo", "path": "x", "versions": [
            {"version": "1", "weight": 0.5}, {"version": "2", "weight": 0.5, "options": {"scale": 3.0}}]}])
    with running_server(config, env=_env(receiver)) as server, \
            httpx.Client(base_url=server.url, timeout=30) as http:
        served = {}
        for index, path in enumerate(["/predict/echo/versions/1", "/predict/echo/versions/2",
                                      *["/predict/echo"] * 6]):
            header, trace_id, _ = _traceparent(100 + index)
            answer = http.post(path, json={"inputs": [1.0]}, headers={"traceparent": header})
            assert answer.status_code == 200
            served[trace_id] = answer.headers["x-model-version"]
        assert set(served.values()) == {"1", "2"}

        def arrived(spans: list[Received]) -> bool:  # each request's span and its batch's
            return all({s.span.trace_id.hex() for s in spans if (s.span.name == "batch") == batch}
                       >= set(served) for batch in (True, False))
        spans = receiver.wait_for(arrived)
    for received in spans:
        version = served[received.span.trace_id.hex()]
        assert received.attributes["batchserve.model"] == "echo", received.span.name
        assert received.attributes["batchserve.model.version"] == version, received.span.name


def test_a_failed_request_is_an_error_span_with_the_stages_it_reached(
        tmp_path: Path, receiver: Receiver) -> None:
    header, trace_id, _ = _traceparent(41)
    with running_server(_echo(tmp_path), env=_env(receiver)) as server:
        answer = httpx.post(f"{server.url}/predict", json={"model": "echo", "inputs": ["x"]},
                            headers={"traceparent": header}, timeout=30)
        assert answer.status_code == 400
        spans = receiver.wait_for(lambda spans: any(s.span.name == "POST /predict" for s in spans))
    [request] = [s for s in spans if s.span.name == "POST /predict"]
    assert request.span.trace_id.hex() == trace_id
    assert request.span.status.code == Status.STATUS_CODE_ERROR
    assert "expected a finite number" in request.span.status.message
    assert request.attributes["http.response.status_code"] == 400
    assert request.attributes["error.type"] == "InvalidInput"
    # the stages it reached: it failed in compute_input (preprocessing)
    assert [event.name for event in request.span.events] == ["body", "decode", "compute_input"]


def test_sampling_follows_the_caller_and_the_ratio(tmp_path: Path, receiver: Receiver) -> None:
    env = _env(receiver, OTEL_TRACES_SAMPLER="parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG="0.5")
    with running_server(_echo(tmp_path, delay_ms=0), env=env) as server:
        sampled, sampled_trace, _ = _traceparent(7)
        unsampled, unsampled_trace, _ = _traceparent(8, sampled=False)
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for headers in ({"traceparent": sampled}, {"traceparent": unsampled}):
                assert client.post("/predict", json={"model": "echo", "inputs": [1.0]},
                                   headers=headers).status_code == 200
            for value in range(60):  # no caller's context: the ratio decides
                assert client.post("/predict", json={"model": "echo", "inputs": [float(value)]}
                                   ).status_code == 200
        spans = receiver.wait_for(lambda spans: any(s.span.trace_id.hex() == sampled_trace
                                                    for s in spans if s.span.name == "POST /predict"))
        time.sleep(0.5)  # what else was exported has arrived too
        with receiver.lock:
            spans = list(receiver.spans)
    roots = {s.span.trace_id.hex() for s in spans if s.span.name == "POST /predict"}
    assert sampled_trace in roots and unsampled_trace not in roots
    ratio_traced = len(roots - {sampled_trace})
    assert 10 <= ratio_traced <= 50, ratio_traced  # about half of 60 (binomial: 1e-6 outside)


def test_without_tracing_nothing_is_exported(tmp_path: Path, receiver: Receiver) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "50"}
    with running_server(_echo(tmp_path, delay_ms=0), env=env) as server:
        header, _, _ = _traceparent(3)
        assert httpx.post(f"{server.url}/predict", json={"model": "echo", "inputs": [1.0]},
                          headers={"traceparent": header}, timeout=30).status_code == 200
        time.sleep(1.0)
    assert receiver.spans == []


def test_a_full_export_queue_drops_spans_and_counts_them_without_failing_requests(
        tmp_path: Path) -> None:
    slow = Receiver(hold_s=3.0)  # a collector slower than the spans come
    env = _env(slow, OTEL_BSP_MAX_QUEUE_SIZE="8", OTEL_BSP_MAX_EXPORT_BATCH_SIZE="4")
    try:
        with running_server(_echo(tmp_path, delay_ms=0), env=env) as server:
            with httpx.Client(base_url=server.url, timeout=10) as client:
                for value in range(30):  # 8 spans a request: far more than the queue holds
                    assert client.post("/predict", json={"model": "echo", "inputs": [float(value)]}
                                       ).status_code == 200
            dropped = sample(server.url, "batchserve_trace_spans_dropped_total")
            assert dropped > 0
    finally:
        slow.close()


def test_every_worker_process_exports_its_spans(tmp_path: Path, receiver: Receiver) -> None:
    with running_server(_echo(tmp_path, delay_ms=0), env=_env(receiver), args=["--workers", "2"]) as server:
        for value in range(40):  # a new connection each: spread over the workers
            assert httpx.post(f"{server.url}/predict", json={"model": "echo", "inputs": [float(value)]},
                              timeout=30).status_code == 200
        spans = receiver.wait_for(lambda spans: {s.attributes.get("batchserve.worker") for s in spans
                                                 if s.span.name == "POST /predict"} >= {0, 1})
    assert len([s for s in spans if s.span.name == "POST /predict"]) <= 40


def test_json_log_lines_carry_the_trace_of_the_request_they_concern(
        tmp_path: Path, receiver: Receiver) -> None:
    header, trace_id, _ = _traceparent(11)
    with running_server(_echo(tmp_path, delay_ms=0, complex_output=True), env=_env(receiver),
                        args=["--log-format", "json"]) as server:
        # complex outputs can't be encoded: a 500, logged by the request's lifecycle
        answer = httpx.post(f"{server.url}/predict", json={"model": "echo", "inputs": [1.0]},
                            headers={"traceparent": header}, timeout=30)
        assert answer.status_code == 500
        spans = receiver.wait_for(lambda spans: any(s.span.name == "POST /predict" for s in spans))
        lines = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    [request] = [s for s in spans if s.span.name == "POST /predict"]
    [logged] = [line for line in lines if line["message"].startswith("unexpected error serving")]
    assert logged["trace_id"] == trace_id
    assert logged["span_id"] == request.span.span_id.hex()
    assert logged["level"] == "ERROR" and "exception" in logged
    assert all("trace_id" not in line for line in lines if line is not logged)  # not a request's


def test_tracing_asked_for_with_an_unknown_protocol_is_refused_at_start(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.support import SERVER_ENV

    result = subprocess.run(
        [sys.executable, "-m", "batchserve", "serve", "--config", str(_echo(tmp_path)), "--port", "0",
         "--tracing"], capture_output=True, text=True, timeout=60,
        env={**os.environ, **SERVER_ENV, "OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon"})
    assert result.returncode == 2
    assert "OTEL_EXPORTER_OTLP_PROTOCOL='carrier-pigeon' is not supported" in result.stderr


def test_a_grpc_call_continues_the_trace_context_of_its_metadata(tmp_path: Path, receiver: Receiver) -> None:
    """gRPC's ModelInfer is one more adapter on the lifecycle: its ``traceparent`` metadata is the
    parent of its span, which names the protocol and has the same stage events as REST's."""
    grpc = pytest.importorskip("grpc")
    from batchserve.grpc_api import inference_pb2 as pb

    header, trace_id, parent_id = _traceparent(51)
    unsampled, _, _ = _traceparent(52, sampled=False)
    port = free_port()
    request = pb.ModelInferRequest(model_name="echo")
    request.inputs.add(name="input", datatype="FP64", shape=[1]).contents.fp64_contents.append(1.0)
    with running_server(_echo(tmp_path), env=_env(receiver), args=["--grpc-port", str(port)]), \
            grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                    request_serializer=lambda message: message.SerializeToString(),
                                    response_deserializer=pb.ModelInferResponse.FromString)
        for traceparent in (unsampled, header):
            answer = infer(request, metadata=[("traceparent", traceparent)], timeout=30)
            assert answer.model_name == "echo" and answer.outputs
        spans = receiver.wait_for(lambda spans: any(s.span.trace_id.hex() == trace_id for s in spans
                                                    if s.span.kind == Span.SPAN_KIND_SERVER))
        time.sleep(0.3)  # the unsampled call's span, had it been exported, has arrived too
        with receiver.lock:
            spans = list(receiver.spans)
    requests = [s for s in spans if s.span.kind == Span.SPAN_KIND_SERVER]
    assert [r.span.trace_id.hex() for r in requests] == [trace_id]  # the unsampled caller: none
    [span] = requests
    assert span.span.parent_span_id.hex() == parent_id
    assert span.attributes["batchserve.protocol"] == "grpc"
    # OpenTelemetry's RPC conventions
    assert span.span.name == "inference.GRPCInferenceService/ModelInfer"
    assert span.attributes["rpc.system"] == "grpc"
    assert span.attributes["rpc.service"] == "inference.GRPCInferenceService"
    assert span.attributes["rpc.method"] == "ModelInfer"
    assert span.attributes["batchserve.model"] == "echo"
    assert [event.name for event in span.span.events] == STAGES
    assert span.span.links  # to the batch that ran it
