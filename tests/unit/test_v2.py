"""Open Inference Protocol (KServe v2): the protocol in-process, then the official clients
(Triton's and KServe's) against a real server."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sklearn.datasets
from fastapi.testclient import TestClient
from sklearn.linear_model import LinearRegression

from tests.support import ROOT, make_client, running_server, wait_ready, write_models

ROW = [0.038, 0.051, 0.062, 0.022, -0.044, -0.035, -0.043, -0.003, 0.020, -0.018]
CHINA = Path(os.path.dirname(sklearn.datasets.__file__)) / "images" / "china.jpg"


def models(diabetes_path: Path, resnet_weights: Path, transformer_dir: Path) -> list[dict[str, Any]]:
    return [
        {"name": "diabetes", "backend": "sklearn", "path": str(diabetes_path), "max_wait_ms": 5},
        {"name": "sentiment", "backend": "transformer", "path": str(transformer_dir)},
        {"name": "resnet50", "backend": "resnet50", "path": str(resnet_weights), "max_batch_size": 2},
        {"name": "echo", "backend": "echo", "path": "x"},
        {"name": "broken", "backend": "echo", "path": "x", "options": {"fail_load": True}},
    ]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, diabetes_path: Path, resnet_weights: Path,
           transformer_dir: Path) -> Iterator[TestClient]:
    with make_client(tmp_path_factory.mktemp("v2"),
                     models(diabetes_path, resnet_weights, transformer_dir)) as test_client:
        wait_ready(test_client, timeout_s=120)
        yield test_client


def infer(client: TestClient, model: str, body: dict[str, Any]) -> Any:
    return client.post(f"/v2/models/{model}/infer", json=body)


def test_server_and_model_metadata(client: TestClient) -> None:
    assert client.get("/v2").json()["extensions"] == ["binary_tensor_data"]
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").status_code == 503  # "broken" failed to load
    metadata = client.get("/v2/models/diabetes").json()
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP64", "shape": [-1, 10]}]
    assert metadata["versions"] == ["1"]
    assert client.get("/v2/models/diabetes/versions/1").json() == metadata
    assert client.get("/v2/models/diabetes/versions/7").status_code == 404
    assert client.get("/v2/models/nope").status_code == 404
    assert "error" in client.get("/v2/models/nope").json()


def test_ready_endpoints_answer_503_not_400_or_500(client: TestClient) -> None:
    assert client.get("/v2/models/diabetes/ready").status_code == 200
    broken = client.get("/v2/models/broken/ready")
    assert broken.status_code == 503 and broken.json() == {"name": "broken", "ready": False}
    response = infer(client, "broken", {"inputs": [{"name": "input", "shape": [1], "datatype": "FP64",
                                                    "data": [1.0]}]})
    assert response.status_code == 503 and "told to fail" in response.json()["error"]


def test_json_infer_matches_the_estimator(client: TestClient,
                                          diabetes: tuple[np.ndarray, LinearRegression]) -> None:
    features, estimator = diabetes
    body = {"id": "abc", "inputs": [{"name": "input", "shape": [3, 10], "datatype": "FP64",
                                     "data": features[:3].tolist()}]}  # nested form
    response = infer(client, "diabetes", body)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["id"] == "abc" and result["model_name"] == "diabetes"
    [output] = result["outputs"]
    assert output["name"] == "output" and output["datatype"] == "FP64" and output["shape"] == [3]
    assert output["data"] == pytest.approx(estimator.predict(features[:3]).tolist(), rel=1e-12)
    flat = {"inputs": [{"name": "input", "shape": [1, 10], "datatype": "FP32", "data": ROW}]}
    assert infer(client, "diabetes", flat).status_code == 200


def test_binary_tensor_data_extension(client: TestClient,
                                      diabetes: tuple[np.ndarray, LinearRegression]) -> None:
    features, estimator = diabetes
    raw = features[:2].astype("<f8").tobytes()
    header = json.dumps({"inputs": [{"name": "input", "shape": [2, 10], "datatype": "FP64",
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "outputs": [{"name": "output", "parameters": {"binary_data": True}}]}).encode()
    response = client.post("/v2/models/diabetes/infer", content=header + raw,
                           headers={"Inference-Header-Content-Length": str(len(header)),
                                    "content-type": "application/octet-stream"})
    assert response.status_code == 200, response.text
    length = int(response.headers["inference-header-content-length"])
    meta = json.loads(response.content[:length])
    assert meta["outputs"][0]["parameters"]["binary_data_size"] == 16
    values = np.frombuffer(response.content[length:], dtype="<f8")
    assert values.tolist() == pytest.approx(estimator.predict(features[:2]).tolist(), rel=1e-12)


def test_bytes_tensors_for_text_and_images(client: TestClient) -> None:
    text = infer(client, "sentiment", {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES",
                                                   "data": ["great battery", "it broke"]}]})
    assert text.status_code == 200, text.text
    outputs = {o["name"]: o for o in text.json()["outputs"]}
    assert outputs["label"]["shape"] == [2] and outputs["probabilities"]["shape"] == [2, 3]
    image = CHINA.read_bytes()
    blob = struct.pack("<I", len(image)) + image
    header = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(blob)}}],
                         "parameters": {"top_k": 2}}).encode()
    response = client.post("/v2/models/resnet50/infer", content=header + blob,
                           headers={"Inference-Header-Content-Length": str(len(header))})
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert outputs["labels"]["shape"] == [1, 2] and outputs["indices"]["datatype"] == "INT64"
    predict = client.post("/predict/resnet50?top_k=2", content=image, headers={"content-type": "image/jpeg"})
    assert [c["index"] for c in predict.json()["outputs"][0]] == outputs["indices"]["data"]


@pytest.mark.parametrize(("model", "name", "datatype", "data", "expected"), [
    ("sentiment", "input", "BYTES", ["great"], "['text']"),
    ("resnet50", "text", "BYTES", ["x"], "['image']"),
    ("echo", "x", "FP64", [1.0], "['input']"),  # the generic codec too
])
def test_inputs_are_matched_by_name(client: TestClient, model: str, name: str, datatype: str,
                                    data: list[Any], expected: str) -> None:
    response = infer(client, model, {"inputs": [{"name": name, "shape": [1], "datatype": datatype,
                                                 "data": data}]})
    assert response.status_code == 400, response.text
    assert response.json()["error"] == f"input tensors ['{name}'] are not the model's: it takes {expected}"


def test_generic_adapter_serves_any_backend(client: TestClient) -> None:
    response = infer(client, "echo", {"inputs": [{"name": "input", "shape": [3], "datatype": "FP32",
                                                  "data": [1, 2, 3]}]})
    assert response.status_code == 200, response.text
    [output] = response.json()["outputs"]
    assert output["datatype"] == "BYTES" and output["data"] == ["2.0", "4.0", "6.0"]


@pytest.mark.parametrize(("body", "status", "words"), [
    ({"inputs": []}, 422, "non-empty list"),
    ({"inputs": [{"name": "input", "shape": [1, 10], "datatype": "FP99", "data": ROW}]}, 422, "datatype"),
    ({"inputs": [{"name": "input", "shape": [2, 10], "datatype": "FP64", "data": ROW}]}, 400,
     "10 elements for shape [2, 10]"),
    ({"inputs": [{"name": "input", "shape": [1, 10], "datatype": "FP64", "data": ["x"] * 10}]}, 400,
     "must be numbers"),
    ({"inputs": [{"name": "input", "shape": [1, 10], "datatype": "INT8", "data": [1000] * 10}]}, 400,
     "does not fit INT8"),
    ({"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}]}, 400,
     "item 0: expected 10 features, got 3"),
    ({"inputs": [{"name": "input", "shape": [1, 10], "datatype": "FP64"}]}, 422, "neither 'data'"),
    ({"inputs": [{"name": "input", "shape": [-1], "datatype": "FP64", "data": []}]}, 422, "non-negative"),
    ({"inputs": [{"name": "input", "shape": [1 << 40], "datatype": "FP64", "data": []}]}, 400, "declares"),
    ({"inputs": [{"name": "input", "shape": [1, 10], "datatype": "FP64", "data": ROW}],
      "outputs": [{"name": "nope"}]}, 400, "unknown outputs ['nope']"),
    ({"inputs": [{"name": "a", "shape": [1, 10], "datatype": "FP64", "data": ROW},
                 {"name": "b", "shape": [1, 10], "datatype": "FP64", "data": ROW}]}, 400,
     "input tensors ['a', 'b'] are not the model's: it takes ['input']"),
    ({"inputs": [{"name": "x", "shape": [1, 10], "datatype": "FP64", "data": ROW}]}, 400,
     "input tensors ['x'] are not the model's: it takes ['input']"),
    ({"inputs": [{"name": "input", "shape": [1, 10], "datatype": "FP64", "data": ROW},
                 {"name": "extra", "shape": [1], "datatype": "FP64", "data": [1]}]}, 400,
     "input tensors ['extra', 'input'] are not the model's: it takes ['input']"),
])
def test_bad_tensors_are_clear_4xx(client: TestClient, body: dict[str, Any], status: int, words: str) -> None:
    response = infer(client, "diabetes", body)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]


def test_bad_binary_framing(client: TestClient) -> None:
    header = json.dumps({"inputs": [{"name": "input", "shape": [1, 10], "datatype": "FP64",
                                     "parameters": {"binary_data_size": 80}}]}).encode()
    cases = [(header + b"\0" * 40, str(len(header)), "exceeds the binary data"),
             (header + b"\0" * 88, str(len(header)), "belong to no input"),
             (header, "99999", "within the body")]
    for body, length, words in cases:
        response = client.post("/v2/models/diabetes/infer", content=body,
                               headers={"Inference-Header-Content-Length": length})
        assert response.status_code == 422, response.text
        assert words in response.json()["error"]
    text = json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                                   "parameters": {"binary_data_size": 6}}]}).encode()
    bad_utf8 = struct.pack("<I", 2) + b"\xff\xfe"
    response = client.post("/v2/models/sentiment/infer", content=text + bad_utf8,
                           headers={"Inference-Header-Content-Length": str(len(text))})
    assert response.status_code == 400 and "not valid UTF-8" in response.json()["error"]


@pytest.mark.parametrize(("method", "path", "status"), [
    ("POST", "/v2/repository/index", 403),  # management is off
    ("POST", "/v2/repository/models/diabetes/load", 403),
    ("GET", "/v2/nope", 404),
    ("DELETE", "/v2/models/diabetes/infer", 405),
    ("GET", "/v2/models/nope/ready", 404),
])
def test_every_v2_route_answers_errors_in_v2s_shape(client: TestClient, method: str, path: str,
                                                     status: int) -> None:
    response = client.request(method, path)
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"] and isinstance(body["error"], str) and body["error"], body


def test_model_config_as_triton_serves_it(client: TestClient) -> None:
    config = client.get("/v2/models/diabetes/config")
    assert config.status_code == 200, config.text
    body = config.json()
    assert body["name"] == "diabetes" and body["max_batch_size"] == 32
    assert body["input"] == [{"name": "input", "data_type": "TYPE_FP64", "dims": [10]}]
    assert body["output"] == [{"name": "output", "data_type": "TYPE_FP64", "dims": [1]}]
    assert body["dynamic_batching"]["max_queue_delay_microseconds"] == 5000
    assert body["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == 1024
    text = client.get("/v2/models/sentiment/versions/1/config").json()
    assert text["input"] == [{"name": "text", "data_type": "TYPE_STRING", "dims": [1]}]
    assert client.get("/v2/models/diabetes/versions/7/config").status_code == 404
    assert client.get("/v2/models/nope/config").json() == {"error": "unknown model 'nope'; known "
                                                           "models: ['broken', 'diabetes', 'echo', "
                                                           "'resnet50', 'sentiment']"}


def test_model_statistics_count_requests_rows_batches_and_stage_times(tmp_path: Path) -> None:
    with make_client(tmp_path, [{"name": "echo", "backend": "echo", "path": "x"},
                                {"name": "idle", "backend": "echo", "path": "x"}]) as client:
        wait_ready(client)
        for _ in range(3):
            ok = infer(client, "echo", {"inputs": [{"name": "input", "shape": [2], "datatype": "FP64",
                                                    "data": [1, 2]}]})
            assert ok.status_code == 200, ok.text
        bad = infer(client, "echo", {"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES",
                                                 "data": ["not a number"]}]})
        assert bad.status_code == 400, bad.text
        response = client.get("/v2/models/echo/stats")
        assert response.status_code == 200, response.text
        [stats] = response.json()["model_stats"]
        assert (stats["name"], stats["version"]) == ("echo", "1")
        assert stats["inference_count"] == 6 and stats["execution_count"] == 3  # rows, batches
        inference = stats["inference_stats"]
        assert inference["success"]["count"] == 3 and inference["success"]["ns"] > 0
        assert inference["fail"]["count"] == 1
        for stage in ("queue", "compute_input", "compute_infer", "compute_output"):
            assert inference[stage]["count"] == 3 and inference[stage]["ns"] >= 0, stage
        assert inference["compute_infer"]["ns"] > 0
        assert client.get("/v2/models/echo/versions/1/stats").json()["model_stats"] == [stats]
        every = client.get("/v2/models/stats").json()["model_stats"]
        assert [s["name"] for s in every] == ["echo", "idle"]
        assert every[1]["inference_count"] == 0 and every[1]["inference_stats"]["success"]["count"] == 0
        assert client.get("/v2/models/nope/stats").status_code == 404


def test_v2_and_predict_rows_share_the_batcher(tmp_path: Path) -> None:
    # Behind a held batch, a v2 request's two rows and a /predict request's one row queue in
    # the same batcher, and go together in the next batch.
    go = tmp_path / "go"
    with make_client(tmp_path, [{"name": "shared", "backend": "echo", "path": "x",
                                 "options": {"holds": {"1": str(go)}}}]) as client, \
            ThreadPoolExecutor(3) as pool:
        wait_ready(client)

        def sizes() -> tuple[float, float]:
            text = client.get("/metrics").text
            def value(name: str) -> float:
                line = next(x for x in text.splitlines() if x.startswith(f'{name}{{model="shared"}}'))
                return float(line.split()[-1])
            return value("batchserve_batch_size_count"), value("batchserve_batch_size_sum")

        def until(condition: Any) -> None:
            give_up = time.monotonic() + 20
            while not condition():
                assert time.monotonic() < give_up
                time.sleep(0.01)

        try:
            held = pool.submit(client.post, "/predict", json={"model": "shared", "inputs": [1]})
            until(lambda: sizes() == (1, 1))
            v2 = pool.submit(infer, client, "shared", {"inputs": [
                {"name": "input", "shape": [2], "datatype": "FP64", "data": [2, 3]}]})
            predict = pool.submit(client.post, "/predict", json={"model": "shared", "inputs": [4]})
            until(lambda: client.get("/models/shared").json()["queued_rows"] == 3)
        finally:
            go.touch()
        assert held.result(20).json()["outputs"] == [2.0]
        assert v2.result(20).json()["outputs"][0]["data"] == ["4.0", "6.0"]
        assert predict.result(20).json()["outputs"] == [8.0]
        assert sizes() == (2, 4)  # the held batch, then one batch of the three rows


# -- the official clients against a real server --------------------------------------------

@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, diabetes_path: Path, resnet_weights: Path,
           transformer_dir: Path) -> Iterator[str]:
    config = write_models(tmp_path_factory.mktemp("served") / "models.toml",
                          models(diabetes_path, resnet_weights, transformer_dir)[:3])
    with running_server(config) as server:
        yield server.url


def test_tritons_http_client(served: str, diabetes: tuple[np.ndarray, LinearRegression]) -> None:
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    features, estimator = diabetes
    client = triton.InferenceServerClient(served.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("diabetes")
    assert client.get_model_metadata("diabetes")["inputs"][0]["shape"] == [-1, 10]
    for binary in (True, False):
        tensor = triton.InferInput("input", [4, 10], "FP64")
        tensor.set_data_from_numpy(features[:4], binary_data=binary)
        result = client.infer("diabetes", [tensor],
                              outputs=[triton.InferRequestedOutput("output", binary_data=binary)])
        assert result.as_numpy("output").tolist() == pytest.approx(estimator.predict(features[:4]).tolist())
    text = triton.InferInput("text", [2], "BYTES")
    text.set_data_from_numpy(np.array([b"great battery", b"it broke"], dtype=object))
    labels = client.infer("sentiment", [text]).as_numpy("label")
    assert labels.shape == (2,) and all(label in (b"negative", b"neutral", b"positive") for label in labels)
    image = triton.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([CHINA.read_bytes()], dtype=object))
    result = client.infer("resnet50", [image], parameters={"top_k": 3})
    assert result.as_numpy("probabilities").shape == (1, 3)
    wrong = triton.InferInput("input", [1, 3], "FP64")
    wrong.set_data_from_numpy(np.zeros((1, 3)))
    with pytest.raises(InferenceServerException, match="expected 10 features"):
        client.infer("diabetes", [wrong])
    client.close()


def test_tritons_client_reads_management_errors(served: str) -> None:
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    client = triton.InferenceServerClient(served.removeprefix("http://"))
    try:
        with pytest.raises(InferenceServerException, match="management API is off"):
            client.get_model_repository_index()
        with pytest.raises(InferenceServerException, match="management API is off"):
            client.load_model("diabetes")
    finally:
        client.close()


def test_tritons_client_reads_model_config_and_statistics(
        served: str, diabetes: tuple[np.ndarray, LinearRegression]) -> None:
    import tritonclient.http as triton

    features, _ = diabetes
    client = triton.InferenceServerClient(served.removeprefix("http://"))
    try:
        config = client.get_model_config("diabetes")
        assert config["input"] == [{"name": "input", "data_type": "TYPE_FP64", "dims": [10]}]
        assert config["max_batch_size"] == 32
        before = client.get_inference_statistics("diabetes")["model_stats"][0]
        tensor = triton.InferInput("input", [2, 10], "FP64")
        tensor.set_data_from_numpy(features[:2])
        client.infer("diabetes", [tensor])
        after = client.get_inference_statistics("diabetes")["model_stats"][0]
        succeeded = [s["inference_stats"]["success"]["count"] for s in (before, after)]
        assert succeeded[1] == succeeded[0] + 1
        assert after["inference_count"] == before["inference_count"] + 2
        every = client.get_inference_statistics()["model_stats"]
        assert sorted(s["name"] for s in every) == ["diabetes", "resnet50", "sentiment"]
    finally:
        client.close()


def test_kserves_python_client(served: str, diabetes: tuple[np.ndarray, LinearRegression]) -> None:
    python = ROOT / ".venv-kserve" / "bin" / "python"
    if not python.exists():
        if os.environ.get("BATCHSERVE_REQUIRE_SERVICES"):
            pytest.fail(f"{python} is missing: `make test` creates it (KServe's client in its own venv)")
        pytest.skip("KServe's client lives in .venv-kserve, which `make test` creates")
    result = subprocess.run([str(python), str(ROOT / "tests" / "clients" / "kserve_client.py"), served],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["live"] and seen["ready"] and seen["model_ready"]
    _, estimator = diabetes
    expected = estimator.predict(np.array([ROW, [0.0] * 10])).tolist()
    for binary in ("False", "True"):
        answer = seen[f"diabetes_binary_{binary}"]
        assert answer["id"] == f"r-{binary}"
        assert answer["outputs"]["output"] == pytest.approx(expected)
    assert len(seen["text"]["label"]) == 2 and len(seen["text"]["probabilities"]) == 2
