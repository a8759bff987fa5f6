"""The Open Inference Protocol over gRPC against a real server (``--grpc-port``): tritonclient.grpc's
sync, asyncio and streaming clients, answers equal to REST's for the same inputs, typed contents
as well as raw, the status codes clients expect, the health service, statistics and the model
repository behind the management token."""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from batchserve.grpc_api import inference_pb2 as pb
from grpc_health.v1 import health_pb2
from tritonclient.utils import InferenceServerException

from tests.support import ServerProcess, free_port, running_server, write_models

ROW = [0.038, 0.051, 0.062, 0.022, -0.044, -0.035, -0.043, -0.003, 0.020, -0.018]
TOKEN = "correct-horse-battery-staple"
SERVICE = "/inference.GRPCInferenceService"


class GrpcServer:
    """A real server with its gRPC port; ``target`` is what a gRPC client dials."""

    def __init__(self, process: ServerProcess, port: int) -> None:
        self.process = process
        self.url = process.url
        self.target = f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, diabetes_path: Path) -> Iterator[GrpcServer]:
    config = write_models(tmp_path_factory.mktemp("grpc") / "models.toml", [
        {"name": "diabetes", "backend": "sklearn", "path": str(diabetes_path), "max_wait_ms": 2},
        {"name": "echo", "backend": "echo", "path": "x"},
    ])
    port = free_port()
    with running_server(config, args=["--grpc-port", str(port)],
                        env={"BATCHSERVE_MANAGEMENT_TOKEN": TOKEN}) as process:
        yield GrpcServer(process, port)


@pytest.fixture
def client(server: GrpcServer) -> Iterator[Any]:
    with triton.InferenceServerClient(server.target) as grpc_client:
        yield grpc_client
        # whatever the case did, the server is alive and answers afterwards
        assert grpc_client.is_server_live()
        assert grpc_client.infer("diabetes", [_features(np.array([ROW]))]).as_numpy("output").shape == (1,)
    assert server.process.process.poll() is None


def _features(rows: np.ndarray[Any, Any], datatype: str = "FP64") -> Any:
    tensor = triton.InferInput("input", list(rows.shape), datatype)
    tensor.set_data_from_numpy(rows.astype(np.float64 if datatype == "FP64" else np.float32))
    return tensor


def _rest(server: GrpcServer, model: str, inputs: list[dict[str, Any]]) -> dict[str, Any]:
    response = httpx.post(f"{server.url}/v2/models/{model}/infer", json={"inputs": inputs}, timeout=60)
    assert response.status_code == 200, response.text
    return {o["name"]: o["data"] for o in response.json()["outputs"]}


def _call(server: GrpcServer, method: str, request: Any, response: Any,
          metadata: tuple[tuple[str, str], ...] = ()) -> Any:
    with grpc.insecure_channel(server.target) as channel:
        stub: Any = channel.unary_unary(f"{SERVICE}/{method}", request_serializer=_serialize,
                                        response_deserializer=response.FromString)
        return stub(request, metadata=metadata, timeout=60)


def _serialize(message: Any) -> bytes:
    serialized: bytes = message.SerializeToString()
    return serialized


def test_metadata_config_and_readiness_as_tritonclient_reads_them(server: GrpcServer, client: Any) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("diabetes") and client.is_model_ready("diabetes", "1")
    assert client.get_server_metadata(as_json=True)["name"] == "batchserve"
    metadata = client.get_model_metadata("diabetes", as_json=True)
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP64", "shape": ["-1", "10"]}]
    assert metadata["outputs"] == [{"name": "output", "datatype": "FP64", "shape": ["-1"]}]
    config = client.get_model_config("diabetes", as_json=True)["config"]
    rest = httpx.get(f"{server.url}/v2/models/diabetes/config", timeout=10).json()
    assert config["max_batch_size"] == rest["max_batch_size"]
    assert config["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == \
        rest["dynamic_batching"]["default_queue_policy"]["max_queue_size"]
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP64", "dims": ["10"]}]
    with pytest.raises(InferenceServerException) as missing:
        client.get_model_metadata("nope")
    assert missing.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as version:
        client.get_model_config("diabetes", "7")
    assert version.value.status() == "StatusCode.NOT_FOUND"
    assert "its versions: ['1']" in version.value.message()


@pytest.mark.parametrize("datatype", ["FP64", "FP32"])
def test_sync_infer_equals_rest_for_the_same_rows(server: GrpcServer, client: Any, datatype: str) -> None:
    rows = np.array([ROW, [0.0] * 10, [-0.01 * i for i in range(10)]])
    result = client.infer("diabetes", [_features(rows, datatype)], request_id="r-1")
    rest = _rest(server, "diabetes", [{"name": "input", "datatype": datatype, "shape": [3, 10],
                                       "data": rows.astype(np.float32 if datatype == "FP32" else
                                                           np.float64).tolist()}])
    assert result.as_numpy("output").tolist() == rest["output"]
    assert result.get_response().id == "r-1"
    assert result.get_response().model_name == "diabetes"


def test_typed_contents_are_answered_in_typed_contents(server: GrpcServer) -> None:
    request = pb.ModelInferRequest(model_name="diabetes", id="typed")
    request.inputs.add(name="input", datatype="FP64", shape=[2, 10]).contents.fp64_contents.extend(ROW * 2)
    response = _call(server, "ModelInfer", request, pb.ModelInferResponse)
    assert not response.raw_output_contents
    rest = _rest(server, "diabetes",
                 [{"name": "input", "datatype": "FP64", "shape": [2, 10], "data": ROW * 2}])
    assert list(response.outputs[0].contents.fp64_contents) == rest["output"]
    assert (response.id, list(response.outputs[0].shape)) == ("typed", [2])


def test_errors_are_the_status_codes_clients_expect_naming_the_item(client: Any) -> None:
    with pytest.raises(InferenceServerException) as unknown:
        client.infer("nope", [_features(np.array([ROW]))])
    assert unknown.value.status() == "StatusCode.NOT_FOUND"
    short = np.array([ROW, ROW[:3] + [0.0] * 7])[:, :3]
    with pytest.raises(InferenceServerException) as bad:
        client.infer("diabetes", [_features(short)])
    assert bad.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "item 0: expected 10 features, got 3" in bad.value.message()
    with pytest.raises(InferenceServerException) as named:
        wrong = triton.InferInput("pixels", [1, 10], "FP64")
        wrong.set_data_from_numpy(np.array([ROW]))
        client.infer("diabetes", [wrong])
    assert named.value.status() == "StatusCode.INVALID_ARGUMENT" and "'pixels'" in named.value.message()
    with pytest.raises(InferenceServerException) as output:
        client.infer("diabetes", [_features(np.array([ROW]))],
                     outputs=[triton.InferRequestedOutput("nope")])
    assert output.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "unknown outputs" in output.value.message()


def test_asyncio_client_answers_concurrent_requests(server: GrpcServer) -> None:
    async def run() -> list[list[float]]:
        async with triton_aio.InferenceServerClient(server.target) as aio_client:
            assert await aio_client.is_server_ready()
            results = await asyncio.gather(*(
                aio_client.infer("diabetes", [_features(np.array([ROW]) * (i + 1))]) for i in range(16)))
            return [r.as_numpy("output").tolist() for r in results]

    answers = asyncio.run(run())
    for i, answer in enumerate(answers):
        expected = _rest(server, "diabetes", [{"name": "input", "datatype": "FP64", "shape": [1, 10],
                                               "data": (np.array(ROW) * (i + 1)).tolist()}])
        assert answer == pytest.approx(expected["output"], rel=1e-12)


def test_stream_answers_each_request_and_an_error_does_not_end_it(server: GrpcServer) -> None:
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    with triton.InferenceServerClient(server.target) as stream_client:
        stream_client.start_stream(callback=lambda result, error: answers.put((result, error)))
        try:
            stream_client.async_stream_infer("diabetes", [_features(np.array([ROW]))], request_id="a")
            stream_client.async_stream_infer("diabetes", [_features(np.array([ROW])[:, :4])], request_id="b")
            stream_client.async_stream_infer("nope", [_features(np.array([ROW]))], request_id="c")
            stream_client.async_stream_infer("diabetes", [_features(np.array([ROW, ROW]))], request_id="d")
            seen = [answers.get(timeout=60) for _ in range(4)]
        finally:
            stream_client.stop_stream()
    results = {r.get_response().id: r.as_numpy("output").tolist() for r, e in seen if e is None}
    errors = " | ".join(str(e) for r, e in seen if e is not None)
    assert set(results) == {"a", "d"} and len(results["d"]) == 2
    # The same row, alone or in a batch of two (with "a" or not, as the batcher met them): the same
    # prediction, to the last bits the BLAS summation order may change (CI: ...726 against ...73).
    assert results["a"] == pytest.approx(results["d"][:1], rel=1e-12)
    assert "item 0: expected 10 features, got 4" in errors and "unknown model 'nope'" in errors


def test_health_service_mirrors_readyz(server: GrpcServer) -> None:
    with grpc.insecure_channel(server.target) as channel:
        check: Any = channel.unary_unary("/grpc.health.v1.Health/Check", request_serializer=_serialize,
                                         response_deserializer=health_pb2.HealthCheckResponse.FromString)
        for service in ("", "inference.GRPCInferenceService"):
            answer = check(health_pb2.HealthCheckRequest(service=service), timeout=30)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as unknown:
            check(health_pb2.HealthCheckRequest(service="other"), timeout=30)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def test_statistics_count_the_requests_served(server: GrpcServer, client: Any) -> None:
    before = client.get_inference_statistics("diabetes", as_json=True)["model_stats"][0]
    client.infer("diabetes", [_features(np.array([ROW, ROW, ROW]))])
    after = client.get_inference_statistics("diabetes", as_json=True)["model_stats"][0]
    assert int(after["inference_count"]) >= int(before.get("inference_count", 0)) + 3
    success = after["inference_stats"]["success"]
    assert int(success["count"]) >= int(before["inference_stats"]["success"].get("count", 0)) + 1
    assert int(after["inference_stats"]["queue"]["ns"]) > 0
    every = client.get_inference_statistics(as_json=True)["model_stats"]
    assert {s["name"] for s in every} == {"diabetes", "echo"}


def test_unserved_rpcs_are_unimplemented(client: Any) -> None:
    with pytest.raises(InferenceServerException) as shm:
        client.get_system_shared_memory_status()
    assert shm.value.status() == "StatusCode.UNIMPLEMENTED"


def test_repository_calls_need_the_management_token(server: GrpcServer, client: Any) -> None:
    with pytest.raises(InferenceServerException) as missing:
        client.get_model_repository_index()
    assert missing.value.status() == "StatusCode.UNAUTHENTICATED"
    with pytest.raises(InferenceServerException) as wrong:
        client.unload_model("echo", headers={"authorization": "Bearer wrong-token-wrong-token"})
    assert wrong.value.status() == "StatusCode.UNAUTHENTICATED"
    auth = {"authorization": f"Bearer {TOKEN}"}
    index = client.get_model_repository_index(headers=auth, as_json=True)["models"]
    assert {m["name"]: m["state"] for m in index} == {"diabetes": "READY", "echo": "READY"}
    client.unload_model("echo", headers=auth)
    try:
        assert not client.is_model_ready("echo")
        assert httpx.get(f"{server.url}/models/echo", timeout=10).json()["state"] == "unloaded"
    finally:
        client.load_model("echo", headers=auth)
    assert client.is_model_ready("echo")
    with pytest.raises(InferenceServerException) as absent:
        client.load_model("nope", headers=auth)
    assert absent.value.status() == "StatusCode.NOT_FOUND"


def test_no_repository_calls_over_grpc_where_management_has_its_own_port(tmp_path: Path,
                                                                         diabetes_path: Path) -> None:
    config = write_models(tmp_path / "models.toml", [
        {"name": "diabetes", "backend": "sklearn", "path": str(diabetes_path)}])
    port = free_port()
    with running_server(config, args=["--grpc-port", str(port), "--management-port", str(free_port())],
                        env={"BATCHSERVE_MANAGEMENT_TOKEN": TOKEN}) as server, \
            triton.InferenceServerClient(f"127.0.0.1:{port}") as grpc_client:
        with pytest.raises(InferenceServerException) as refused:
            grpc_client.unload_model("diabetes", headers={"authorization": f"Bearer {TOKEN}"})
        assert refused.value.status() == "StatusCode.PERMISSION_DENIED"
        assert "management port only" in refused.value.message()
        assert grpc_client.is_model_ready("diabetes")
        assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200
