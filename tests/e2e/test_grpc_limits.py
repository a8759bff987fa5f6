"""Hostile ModelInfer messages against a real server's gRPC port: REST's v2 limit cases
(``test_v2_limits.py``) translated. Each is a clear error status naming what was wrong, the
server answers normally afterwards, and nothing large was built from a declared shape."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from batchserve.grpc_api import inference_pb2 as pb
from batchserve.v2.tensors import MAX_ELEMENTS

from tests.support import ServerProcess, free_port, running_server, write_models

ROW = [0.038, 0.051, 0.062, 0.022, -0.044, -0.035, -0.043, -0.003, 0.020, -0.018]
INFER = "/inference.GRPCInferenceService/ModelInfer"
MAX_BODY_BYTES = 1024 * 1024


class Served:
    def __init__(self, process: ServerProcess, channel: grpc.Channel) -> None:
        self.process = process
        self.infer: Any = channel.unary_unary(INFER)  # bytes in, bytes out: hostile messages too


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, diabetes_path: Path) -> Iterator[Served]:
    config = write_models(tmp_path_factory.mktemp("grpclimits") / "models.toml", [
        {"name": "diabetes", "backend": "sklearn", "path": str(diabetes_path)},
        {"name": "echo", "backend": "echo", "path": "x"}])
    port = free_port()
    with running_server(config, args=["--grpc-port", str(port)],
                        env={"BATCHSERVE_MAX_BODY_BYTES": str(MAX_BODY_BYTES)}) as process, \
            grpc.insecure_channel(f"127.0.0.1:{port}", options=[
                ("grpc.max_send_message_length", 64 * MAX_BODY_BYTES)]) as channel:
        yield Served(process, channel)


@pytest.fixture
def infer(server: Served) -> Iterator[Any]:
    yield server.infer
    # whatever the case did, the server is alive and answers afterwards
    answer = pb.ModelInferResponse.FromString(server.infer(_features([1, 10], ROW), timeout=60))
    assert list(answer.outputs[0].shape) == [1]
    assert server.process.process.poll() is None


def _features(shape: list[int], values: list[float] | None = None, *, raw: bytes | None = None,
              datatype: str = "FP64", model: str = "diabetes") -> bytes:
    request = pb.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name="input", datatype=datatype, shape=shape)
    if raw is not None:
        request.raw_input_contents.append(raw)
    elif values is not None:
        tensor.contents.fp64_contents.extend(values)
    serialized: bytes = request.SerializeToString()
    return serialized


def _refused(infer: Any, message: bytes, code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT) -> str:
    with pytest.raises(grpc.RpcError) as refused:
        infer(message, timeout=60)
    assert refused.value.code() == code, refused.value.details()
    details: str = refused.value.details() or ""
    return details


def _peak_rss_bytes(server: Served) -> int:
    """The server's peak resident memory so far (Linux's VmHWM)."""
    status = Path(f"/proc/{server.process.process.pid}/status")
    if not status.exists():
        pytest.skip("needs Linux's /proc to read the server's peak memory")
    line = next(x for x in status.read_text().splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


@pytest.mark.parametrize(("shape", "expected"), [
    ([2**62, 2**62], "shape[0] = 4611686018427387904 declares more than"),
    ([4096, 4096, 4096], f"declares more than {MAX_ELEMENTS} elements"),
    ([1] * 17, "it has 17 dimensions"),
    ([1] * 100_000, "it has 100000 dimensions"),
    ([1, -10], "shape[1] is -10"),
    ([0, 10], "has no items"),
    ([10_000_000, 0], "has no elements"),
    ([5000, 10], "at most 4096 per request"),
])
def test_shapes_past_the_limits_are_refused_before_anything_is_built(
        server: Served, infer: Any, shape: list[int], expected: str) -> None:
    before = _peak_rss_bytes(server)
    assert expected in _refused(infer, _features(shape, []))
    assert "'input'" in _refused(infer, _features(shape, raw=b""))
    assert _peak_rss_bytes(server) - before < 100 * 1024 * 1024


def test_raw_contents_of_the_wrong_length_or_count(infer: Any) -> None:
    assert "79 bytes for shape [1, 10] of FP64" in _refused(infer, _features([1, 10], raw=bytes(79)))
    request = pb.ModelInferRequest(model_name="diabetes")
    request.inputs.add(name="input", datatype="FP64", shape=[1, 10])
    request.raw_input_contents.extend([bytes(80), bytes(80)])
    assert "raw_input_contents has 2 entries for 1 inputs" in _refused(infer, request.SerializeToString())
    both = pb.ModelInferRequest.FromString(_features([1, 10], ROW))
    both.raw_input_contents.append(struct.pack("<10d", *ROW))
    assert "both in contents and in raw_input_contents" in _refused(infer, both.SerializeToString())


def test_typed_contents_that_do_not_match_the_datatype_or_shape(infer: Any) -> None:
    assert "9 elements in contents.fp64_contents for shape [1, 10]" in _refused(
        infer, _features([1, 10], ROW[:9]))
    wrong = pb.ModelInferRequest(model_name="diabetes")
    wrong.inputs.add(name="input", datatype="FP64", shape=[1, 10]).contents.fp32_contents.extend(ROW)
    assert "takes its data in contents.fp64_contents, not fp32_contents" in _refused(
        infer, wrong.SerializeToString())
    assert "datatype must be one of" in _refused(infer, _features([1, 10], ROW, datatype="FP128"))
    narrow = pb.ModelInferRequest(model_name="echo")
    narrow.inputs.add(name="input", datatype="INT8", shape=[1]).contents.int_contents.append(300)
    assert "does not fit INT8" in _refused(infer, narrow.SerializeToString())


@pytest.mark.parametrize(("count", "raw", "expected"), [
    (1, struct.pack("<I", 1000) + b"12", "BYTES element 0 runs past the data"),
    (1, b"\x01\x00", "cannot hold the 1 BYTES elements"),
    (3, struct.pack("<I", 1) + b"1" + struct.pack("<I", 1) + b"2" + b"\x00\x00",
     "ends before BYTES element 2"),
    (2, struct.pack("<I", 1) + b"1" + struct.pack("<I", 1) + b"2" + b"junk", "4 bytes left after"),
])
def test_malformed_bytes_length_prefixes(infer: Any, count: int, raw: bytes, expected: str) -> None:
    assert expected in _refused(infer, _features([count], raw=raw, datatype="BYTES", model="echo"))


def test_an_oversized_message_is_resource_exhausted(infer: Any) -> None:
    rows = MAX_BODY_BYTES // 80 + 10
    message = _features([rows, 10], raw=bytes(80 * rows))
    _refused(infer, message, grpc.StatusCode.RESOURCE_EXHAUSTED)


def test_thousands_of_inputs_are_refused(infer: Any) -> None:
    request = pb.ModelInferRequest(model_name="diabetes")
    for index in range(5000):
        request.inputs.add(name=f"t{index}", datatype="FP64", shape=[1])
    assert "5000 inputs; at most 64" in _refused(infer, request.SerializeToString())


def test_what_is_no_model_infer_request(infer: Any) -> None:
    assert "not a ModelInferRequest" in _refused(infer, b"\x0a\xff\xff\xff\xff\x0f")
    assert "unknown model" in _refused(infer, _features([1, 10], ROW, model="nope"),
                                       grpc.StatusCode.NOT_FOUND)
    assert "no inputs" in _refused(infer, pb.ModelInferRequest(model_name="diabetes").SerializeToString())
    duplicated = _features([1, 10], ROW) + pb.ModelInferRequest(model_name="echo").SerializeToString()
    assert "model_name is sent more than once" in _refused(infer, duplicated)
