"""gRPC requests share REST's lifecycle, against a real server: the timeout a call asks for is the
request's (the model's ``timeout_ms`` capping it), a cancelled call abandons its queued rows,
a full queue is UNAVAILABLE with its retry delay in the trailing metadata, and the drain answers
the calls in flight while refusing new ones. A batch of the echo test model is held on a file
(``holds``), so that each case knows what is queued without timing anything."""

from __future__ import annotations

import contextlib
import queue
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from batchserve.grpc_api import inference_pb2 as pb

from tests.support import ServerProcess, free_port, running_server, sample, write_models

pytestmark = pytest.mark.slow

INFER = "/inference.GRPCInferenceService/ModelInfer"


def _serialize(message: Any) -> bytes:
    serialized: bytes = message.SerializeToString()
    return serialized


def _request(value: float, model: str = "echo") -> Any:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="input", datatype="FP64", shape=[1]).contents.fp64_contents.append(value)
    return request


@contextlib.contextmanager
def _serving(tmp_path: Path, *others: dict[str, Any], **echo: Any) -> Iterator[tuple[ServerProcess, Any]]:
    """A server of the echo model (``echo``: its table's fields; ``others``: more models' tables),
    one row per batch, and a stub of ModelInfer on its gRPC port."""
    options = {**echo.pop("options"), "started": str(tmp_path / "started")}
    config = write_models(tmp_path / "models.toml", [
        {"name": "echo", "backend": "echo", "path": "x", "max_batch_size": 1, **echo, "options": options},
        *others])
    port = free_port()
    with running_server(config, args=["--grpc-port", str(port)]) as server, \
            grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield server, channel.unary_unary(INFER, request_serializer=_serialize,
                                          response_deserializer=pb.ModelInferResponse.FromString)


def _until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        time.sleep(0.02)


def _started(tmp_path: Path) -> list[str]:
    """The rows whose batch has started (the held one included)."""
    path = tmp_path / "started"
    return [line.split()[1] for line in path.read_text().splitlines()] if path.exists() else []


def _queued(server: ServerProcess) -> int:
    rows: int = httpx.get(f"{server.url}/models/echo", timeout=10).json()["queued_rows"]
    return rows


def _recorded(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_the_requested_timeout_is_the_requests_and_the_models_timeout_caps_it(tmp_path: Path) -> None:
    release, record = tmp_path / "release", tmp_path / "record"
    short = {"name": "short", "backend": "echo", "path": "x", "timeout_ms": 500,
             "options": {"holds": {"1": str(release)}}}
    with _serving(tmp_path, short, timeout_ms=60_000,
                  options={"holds": {"1": str(release)}, "record": str(record)}) as (server, infer):
        held = infer.future(_request(1.0), timeout=60)
        _until(lambda: _started(tmp_path) == ["1.0"])
        # A timeout the call asks for, far shorter than the model's (the call's own gRPC deadline
        # becomes it too, tests/unit/test_grpc_deadline.py; here the client's is far longer, so
        # that the server's answer, not the client giving up, is what the client sees).
        with pytest.raises(grpc.RpcError) as deadline:
            infer(_request(2.0), timeout=60, metadata=(("x-request-timeout-ms", "300"),))
        assert deadline.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert sample(server.url, "batchserve_requests_total", model="echo", code="504") == 1
        with pytest.raises(grpc.RpcError) as capped:  # a deadline past the model's timeout_ms: that wins
            infer(_request(1.0, "short"), timeout=60)
        assert capped.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "deadline" in (capped.value.details() or "")
        assert sample(server.url, "batchserve_requests_total", model="short", code="504") == 1
        release.touch()
        assert held.result().outputs[0].contents.bytes_contents == [b"2.0"]
    assert _recorded(record) == ["1.0"]  # row 2 never ran


def test_a_cancelled_call_abandons_its_queued_rows(tmp_path: Path) -> None:
    release, record = tmp_path / "release", tmp_path / "record"
    with _serving(tmp_path, options={"holds": {"1": str(release)}, "record": str(record)}) as (server, infer):
        held = infer.future(_request(1.0), timeout=60)
        _until(lambda: _started(tmp_path) == ["1.0"])
        queued = infer.future(_request(2.0), timeout=60)
        _until(lambda: _queued(server) == 1)
        queued.cancel()
        _until(lambda: sample(server.url, "batchserve_rejected_total", model="echo", reason="cancelled") == 1)
        release.touch()
        assert held.result().outputs[0].contents.bytes_contents == [b"2.0"]
        assert _queued(server) == 0
    assert _recorded(record) == ["1.0"]  # row 2 never ran


def test_a_full_queue_is_unavailable_with_the_retry_delay_in_the_trailers(tmp_path: Path) -> None:
    release = tmp_path / "release"
    with _serving(tmp_path, max_queue=1, options={"holds": {"1": str(release)}}) as (server, infer):
        held = infer.future(_request(1.0), timeout=60)
        _until(lambda: _started(tmp_path) == ["1.0"])
        queued = infer.future(_request(2.0), timeout=60)
        _until(lambda: _queued(server) == 1)
        with pytest.raises(grpc.RpcError) as full:
            infer(_request(3.0), timeout=60)
        assert full.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "queue" in (full.value.details() or "")
        trailers: Any = full.value.trailing_metadata()
        assert str(dict(trailers)["retry-after"]).isdigit()
        release.touch()
        assert held.result().outputs[0].contents.bytes_contents == [b"2.0"]
        assert queued.result().outputs[0].contents.bytes_contents == [b"4.0"]


def test_the_drain_answers_calls_in_flight_and_refuses_new_ones(tmp_path: Path) -> None:
    release = tmp_path / "release"
    with _serving(tmp_path, options={"holds": {"1": str(release)}}) as (server, infer):
        held = infer.future(_request(1.0), timeout=60)
        _until(lambda: _started(tmp_path) == ["1.0"])
        server.terminate()  # SIGTERM: the drain begins
        with pytest.raises(grpc.RpcError) as refused:
            _until(lambda: _refused(infer))
            infer(_request(2.0), timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        release.touch()
        assert held.result().outputs[0].contents.bytes_contents == [b"2.0"]
        assert server.process.wait(30) == 0


def _refused(infer: Any) -> bool:
    try:
        infer(_request(5.0), timeout=1)
    except grpc.RpcError as exc:
        return bool(exc.code() == grpc.StatusCode.UNAVAILABLE)
    return False


def test_the_drain_answers_an_open_streams_requests_then_ends_it(tmp_path: Path) -> None:
    import numpy as np
    import tritonclient.grpc as triton

    release = tmp_path / "release"
    config = write_models(tmp_path / "models.toml", [
        {"name": "echo", "backend": "echo", "path": "x", "max_batch_size": 1,
         "options": {"holds": {"1": str(release)}, "started": str(tmp_path / "started")}}])
    port = free_port()
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    # a grace far longer than the wait below: an open stream that held the drain would show
    with running_server(config, args=["--grpc-port", str(port)], grace_s=300) as server, \
            triton.InferenceServerClient(f"127.0.0.1:{port}") as client:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        try:
            tensor = triton.InferInput("input", [1], "FP64")
            tensor.set_data_from_numpy(np.array([1.0]))
            client.async_stream_infer("echo", [tensor], request_id="held")
            _until(lambda: _started(tmp_path) == ["1.0"])
            server.terminate()  # SIGTERM: the drain begins with the stream open and a request in it
            release.touch()
            result, error = answers.get(timeout=60)
            assert error is None, error
            assert result.get_response().id == "held" and result.as_numpy("output").tolist() == [b"2.0"]
            assert server.process.wait(timeout=60) == 0  # the stream ended once answered
        finally:
            client.stop_stream()
