"""tritonclient.grpc's sync, asyncio and streaming clients against the demo kinds of model over a
real server's gRPC port: diabetes (FP64 and FP32 rows), resnet50 (a JPEG as a BYTES input),
minilm (text in, an embedding out) and an XGBoost classifier; every answer equal to REST's v2
answer for the same inputs."""

from __future__ import annotations

import asyncio
import base64
import os
import queue
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import sklearn.datasets
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio

from tests.support import ServerProcess, free_port, running_server, write_models
from tests.support.trees import train_xgboost

pytestmark = pytest.mark.slow

CHINA = Path(os.path.dirname(sklearn.datasets.__file__)) / "images" / "china.jpg"
ROW = [0.038, 0.051, 0.062, 0.022, -0.044, -0.035, -0.043, -0.003, 0.020, -0.018]


@dataclass
class Case:
    """One model's request: its tensors as numpy arrays (BYTES as object arrays), their v2 JSON
    for REST, and the outputs to compare."""

    model: str
    inputs: dict[str, tuple[str, np.ndarray[Any, Any]]]
    rest: list[dict[str, Any]]
    outputs: list[str]


def _cases(xgb_rows: np.ndarray[Any, Any]) -> list[Case]:
    jpeg = CHINA.read_bytes()
    texts = [b"The battery life is great.", b"Terrible support, it broke after a week."]
    rows = np.array([ROW, [0.0] * 10])
    return [
        Case("diabetes", {"input": ("FP64", rows)},
             [{"name": "input", "datatype": "FP64", "shape": [2, 10], "data": rows.tolist()}], ["output"]),
        Case("diabetes", {"input": ("FP32", rows.astype(np.float32))},
             [{"name": "input", "datatype": "FP32", "shape": [2, 10],
               "data": rows.astype(np.float32).tolist()}], ["output"]),
        Case("resnet50", {"image": ("BYTES", np.array([jpeg], dtype=object))},
             [{"name": "image", "datatype": "BYTES", "shape": [1],
               "data": [base64.b64encode(jpeg).decode()]}], ["labels", "indices", "probabilities"]),
        Case("minilm", {"text": ("BYTES", np.array(texts, dtype=object))},
             [{"name": "text", "datatype": "BYTES", "shape": [2], "data": [t.decode() for t in texts]}],
             ["embedding"]),
        Case("cancer", {"input": ("FP64", xgb_rows)},
             [{"name": "input", "datatype": "FP64", "shape": list(xgb_rows.shape),
               "data": xgb_rows.tolist()}], ["label", "probabilities"]),
    ]


@dataclass
class Served:
    process: ServerProcess
    target: str
    cases: list[Case]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, diabetes_path: Path, resnet_weights: Path,
           minilm_dir: Path) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("grpcmodels")
    xgb = train_xgboost(folder, "binary", "binary:logistic")
    config = write_models(folder / "models.toml", [
        {"name": "diabetes", "backend": "sklearn", "path": str(diabetes_path)},
        {"name": "resnet50", "backend": "resnet50", "path": str(resnet_weights), "max_batch_size": 2},
        {"name": "minilm", "backend": "embedding", "path": str(minilm_dir)},
        {"name": "cancer", "backend": "xgboost", "path": str(xgb.path)},
    ])
    port = free_port()
    with running_server(config, args=["--grpc-port", str(port)]) as process:
        yield Served(process, f"127.0.0.1:{port}", _cases(np.nan_to_num(xgb.features[:3], nan=0.0)))


def _tensors(case: Case) -> list[Any]:
    tensors = []
    for name, (datatype, array) in case.inputs.items():
        tensor = triton.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


def _outputs(case: Case, result: Any) -> dict[str, list[Any]]:
    return {name: [v.decode() if isinstance(v, bytes) else v
                   for v in result.as_numpy(name).reshape(-1).tolist()] for name in case.outputs}


def _rest(server: Served, case: Case) -> dict[str, list[Any]]:
    response = httpx.post(f"{server.process.url}/v2/models/{case.model}/infer",
                          json={"inputs": case.rest}, timeout=120)
    assert response.status_code == 200, response.text
    return {o["name"]: np.asarray(o["data"]).reshape(-1).tolist() for o in response.json()["outputs"]}


def _same(grpc_answer: dict[str, list[Any]], rest_answer: dict[str, list[Any]]) -> None:
    for name, values in grpc_answer.items():
        expected = rest_answer[name]
        if isinstance(values[0], float):  # the same model on the same rows; batch-mates may differ
            assert values == pytest.approx(expected, rel=1e-5, abs=1e-6), name
        else:
            assert values == expected, name


@pytest.mark.parametrize("index", range(5), ids=["diabetes-fp64", "diabetes-fp32", "resnet50-jpeg",
                                                  "minilm-text", "xgboost"])
def test_sync_asyncio_and_streaming_clients_equal_rest(server: Served, index: int) -> None:
    case = server.cases[index]
    rest = _rest(server, case)
    with triton.InferenceServerClient(server.target) as client:
        _same(_outputs(case, client.infer(case.model, _tensors(case))), rest)

    async def aio() -> Any:
        async with triton_aio.InferenceServerClient(server.target) as aio_client:
            return await aio_client.infer(case.model, _tensors(case))

    _same(_outputs(case, asyncio.run(aio())), rest)
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    with triton.InferenceServerClient(server.target) as client:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        try:
            client.async_stream_infer(case.model, _tensors(case), request_id="s")
            result, error = answers.get(timeout=120)
        finally:
            client.stop_stream()
    assert error is None, error
    assert result.get_response().id == "s"
    _same(_outputs(case, result), rest)
