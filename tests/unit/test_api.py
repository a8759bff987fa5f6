"""The HTTP API in-process (FastAPI TestClient, lifespan included)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from batchserve.artifacts import artifact_sha256
from fastapi.testclient import TestClient
from sklearn.linear_model import LinearRegression

from tests.support import make_client, wait_ready


def error_of(response: object) -> dict[str, str]:
    body = response.json()  # type: ignore[attr-defined]
    assert set(body) == {"error"}
    assert set(body["error"]) == {"type", "message"}
    return body["error"]  # type: ignore[no-any-return]


def test_predict_matches_the_estimator(diabetes_client: TestClient,
                                       diabetes: tuple[np.ndarray, LinearRegression]) -> None:
    features, estimator = diabetes
    response = diabetes_client.post(
        "/predict", json={"model": "diabetes", "inputs": features[:5].tolist()})
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "diabetes"
    assert body["outputs"] == pytest.approx(estimator.predict(features[:5]).tolist(), rel=1e-12)


def test_predict_with_the_model_in_the_path(diabetes_client: TestClient) -> None:
    response = diabetes_client.post("/predict/echo", json={"inputs": [1, 2.5]})
    assert response.json() == {"model": "echo", "outputs": [2.0, 5.0]}
    response = diabetes_client.post("/predict/echo", json={"model": "echo", "inputs": [1]})
    assert response.status_code == 200


def test_a_body_without_content_type_is_read_as_json(diabetes_client: TestClient) -> None:
    response = diabetes_client.post("/predict", content=b'{"model": "echo", "inputs": [3]}')
    assert response.json()["outputs"] == [6.0]
    response = diabetes_client.post("/predict", content=b'{"model": "echo", "inputs": [3]}',
                                    headers={"content-type": "application/vnd.api+json"})
    assert response.json()["outputs"] == [6.0]


@pytest.mark.parametrize(("item", "words"), [
    ([1, 2], "item 1: expected 10 features, got 2"),
    ("text", "item 1: expected a list of 10 numbers, got str"),
    ([0] * 9 + [True], "item 1: feature 9 must be a finite number, got True"),
    ([0] * 9 + ["1"], "item 1: feature 9 must be a finite number"),
    ({"age": 1}, "item 1: this model was fitted without feature names"),
])
def test_invalid_item_is_a_400_naming_the_item(diabetes_client: TestClient, item: object,
                                               words: str) -> None:
    response = diabetes_client.post("/predict", json={"model": "diabetes",
                                                      "inputs": [[0] * 10, item]})
    assert response.status_code == 400
    error = error_of(response)
    assert error["type"] == "invalid_input"
    assert words in error["message"]


def test_unknown_model_is_a_404_listing_the_known_ones(diabetes_client: TestClient) -> None:
    response = diabetes_client.post("/predict", json={"model": "nope", "inputs": [1]})
    assert response.status_code == 404
    assert error_of(response)["message"] == "unknown model 'nope'; known models: ['diabetes', 'echo']"
    assert diabetes_client.get("/models/nope").status_code == 404


@pytest.mark.parametrize(("body", "words"), [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b'{"model": "echo"}', "'inputs' is required"),
    (b'{"model": "echo", "inputs": []}', "non-empty list"),
    (b'{"model": "echo", "inputs": 3}', "non-empty list"),
    (b'{"inputs": [1]}', "'model' is required"),
    (b'{"model": 5, "inputs": [1]}', "'model' is required and must be a string"),
    (b'{"model": "echo", "inputs": [1], "parameters": []}', "'parameters' must be an object"),
    (b'{"model": "echo", "inputs": [1], "extra": 1}', "unknown fields ['extra']"),
    (b'\xff\xfe', "not valid JSON"),
    (b'{"model": "diabetes", "inputs": [[1e400]]}', "not valid JSON"),  # orjson: no infinities
    (b'{"model": "echo", "inputs": [NaN]}', "not valid JSON"),
])
def test_malformed_request_is_a_422(diabetes_client: TestClient, body: bytes, words: str) -> None:
    response = diabetes_client.post("/predict", content=body,
                                    headers={"content-type": "application/json"})
    assert response.status_code == 422
    error = error_of(response)
    assert error["type"] == "malformed_request"
    assert words in error["message"]


def test_path_and_body_must_name_the_same_model(diabetes_client: TestClient) -> None:
    response = diabetes_client.post("/predict/echo", json={"model": "diabetes", "inputs": [1]})
    assert response.status_code == 422


def test_unknown_parameters_are_a_400(diabetes_client: TestClient) -> None:
    response = diabetes_client.post("/predict", json={"model": "echo", "inputs": [1],
                                                      "parameters": {"top_k": 3}})
    assert response.status_code == 400
    assert "unknown parameters ['top_k']" in error_of(response)["message"]


def test_body_over_the_limit_is_a_413(tmp_path: Path) -> None:
    with make_client(tmp_path, [{"name": "echo", "backend": "echo", "path": "x"}],
                     max_body_bytes=64) as client:
        wait_ready(client)
        big = b'{"model": "echo", "inputs": [' + b"1," * 40 + b"1]}"
        response = client.post("/predict", content=big, headers={"content-type": "application/json"})
        assert response.status_code == 413
        assert error_of(response)["type"] == "body_too_large"

        def chunks() -> object:  # no Content-Length: the limit holds for chunked bodies too
            yield b'{"model": "echo", "inputs": ['
            for _ in range(40):
                yield b"1,"
            yield b"1]}"

        response = client.post("/predict", content=chunks(),  # type: ignore[arg-type]
                               headers={"content-type": "application/json"})
        assert response.status_code == 413
        assert client.post("/predict", json={"model": "echo", "inputs": [1]}).status_code == 200


def test_non_json_body_is_a_415(diabetes_client: TestClient) -> None:
    response = diabetes_client.post("/predict/echo", content=b"\x89PNG",
                                    headers={"content-type": "image/png"})
    assert response.status_code == 415
    response = diabetes_client.post("/predict", content=b"\x89PNG",
                                    headers={"content-type": "image/png"})
    assert response.status_code == 415


def test_timeout_header_must_be_a_positive_number(diabetes_client: TestClient) -> None:
    for value in ("soon", "0", "-5", "nan"):
        response = diabetes_client.post("/predict", json={"model": "echo", "inputs": [1]},
                                        headers={"X-Request-Timeout-Ms": value})
        assert response.status_code == 422, value
    response = diabetes_client.post("/predict", json={"model": "echo", "inputs": [1]},
                                    headers={"X-Request-Timeout-Ms": "5000"})
    assert response.status_code == 200


def test_deadline_from_the_header_gives_a_504(tmp_path: Path) -> None:
    with make_client(tmp_path, [{"name": "slow", "backend": "echo", "path": "x",
                                 "options": {"delay_ms": 300}}]) as client:
        wait_ready(client)
        response = client.post("/predict", json={"model": "slow", "inputs": [1]},
                               headers={"X-Request-Timeout-Ms": "50"})
        assert response.status_code == 504
        assert error_of(response)["type"] == "deadline_exceeded"


def test_failed_model_does_not_stop_the_others(tmp_path: Path, diabetes_path: Path) -> None:
    models = [
        {"name": "pinned", "backend": "sklearn", "path": str(diabetes_path), "sha256": "0" * 64},
        {"name": "missing", "backend": "sklearn", "path": str(tmp_path / "absent.joblib")},
        {"name": "gpu", "backend": "sklearn", "path": str(diabetes_path), "device": "cuda"},
        {"name": "ok", "backend": "sklearn", "path": str(diabetes_path),
         "sha256": artifact_sha256(diabetes_path)},
    ]
    with make_client(tmp_path, models) as client:
        wait_ready(client)
        ready = client.get("/readyz")
        assert ready.status_code == 503
        states = ready.json()["models"]
        assert states["ok"] == {"state": "ready", "reason": None}
        assert states["pinned"]["state"] == "failed"
        assert "sha256" in states["pinned"]["reason"] and "refusing to load" in states["pinned"]["reason"]
        assert "not found" in states["missing"]["reason"]
        assert "CPU only" in states["gpu"]["reason"]
        response = client.post("/predict", json={"model": "pinned", "inputs": [[0] * 10]})
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert "sha256" in error_of(response)["message"]
        assert client.post("/predict", json={"model": "ok", "inputs": [[0] * 10]}).status_code == 200


def test_readyz_is_503_until_models_are_loaded(tmp_path: Path) -> None:
    with make_client(tmp_path, [{"name": "echo", "backend": "echo", "path": "x",
                                 "options": {"load_delay_ms": 1000}}]) as client:
        first = client.get("/readyz")  # loading happens in the background; /healthz answers meanwhile
        assert first.status_code == 503
        assert first.json()["models"]["echo"]["state"] == "loading"
        assert client.get("/healthz").status_code == 200
        wait_ready(client)
        assert client.get("/readyz").json() == {
            "ready": True, "draining": False,
            "models": {"echo": {"state": "ready", "reason": None}}}
        assert client.get("/healthz").json() == {"status": "alive"}


STRICTNESS_MODELS: list[dict[str, Any]] = [{"name": "echo", "backend": "echo", "path": "x"},
                                            {"name": "broken", "backend": "echo", "path": "x",
                                             "options": {"fail_load": True}}]


def test_one_failed_model_keeps_strict_readiness_at_503(tmp_path: Path) -> None:
    with make_client(tmp_path, STRICTNESS_MODELS) as client:  # strict: the default
        wait_ready(client)
        assert client.get("/readyz").status_code == 503
        assert client.get("/v2/health/ready").status_code == 503


def test_without_strict_readiness_the_models_that_loaded_decide(tmp_path: Path) -> None:
    slow = {"name": "slow", "backend": "echo", "path": "x", "options": {"load_delay_ms": 500}}
    with make_client(tmp_path, [*STRICTNESS_MODELS, slow], strict_readiness=False) as client:
        loading = client.get("/readyz")
        assert loading.status_code == 503 and loading.json()["models"]["slow"]["state"] == "loading"
        wait_ready(client)
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        body = ready.json()
        assert body["ready"] is True
        assert body["models"]["broken"] == {"state": "failed", "reason": "told to fail at load"}
        assert client.get("/v2/health/ready").json() == {"ready": True}
        assert client.get("/v2/models/broken/ready").status_code == 503  # the model itself is not


def test_models_describe_config_state_and_io(diabetes_client: TestClient) -> None:
    listing = diabetes_client.get("/models").json()["models"]
    assert [m["name"] for m in listing] == ["diabetes", "echo"]
    model = diabetes_client.get("/models/diabetes").json()
    assert model["state"] == "ready"
    assert model["config"]["max_batch_size"] == 32
    assert model["input"]["length"] == 10
    assert "output" in model


def test_models_show_artifact_paths_relative_to_the_repository(tmp_path: Path, diabetes_path: Path) -> None:
    # the repository root is the folder above models.toml's (tests.support.write_models)
    root = tmp_path.parent
    inside = diabetes_path.relative_to(root)
    with make_client(tmp_path, [
        {"name": "diabetes", "backend": "sklearn", "path": str(diabetes_path)},
        {"name": "missing", "backend": "sklearn", "path": str(tmp_path / "absent.joblib")},
    ]) as client:
        wait_ready(client)
        assert client.get("/models/diabetes").json()["config"]["path"] == str(inside)
        missing = client.get("/models/missing").json()
        assert missing["config"]["path"] == f"{tmp_path.name}/absent.joblib"
        listing = client.get("/models").text + client.get("/readyz").text
        assert str(root) not in listing, listing  # no absolute path, in a reason either
        assert missing["reason"] == f"artifact not found: {tmp_path.name}/absent.joblib"


def test_metrics_are_exposed_with_the_documented_names(diabetes_client: TestClient) -> None:
    diabetes_client.post("/predict", json={"model": "echo", "inputs": [1, 2, 3]})
    diabetes_client.post("/predict", json={"model": "echo", "inputs": ["x"]})
    text = diabetes_client.get("/metrics").text
    for line in [
        'batchserve_requests_total{code="200",model="echo"} 1.0',
        'batchserve_requests_total{code="400",model="echo"} 1.0',
        'batchserve_batch_size_sum{model="echo"} 3.0',
        'batchserve_model_ready{model="echo"} 1.0',
        'batchserve_queue_rows{model="echo"} 0.0',
        'batchserve_rejected_total{model="echo",reason="queue_full"} 0.0',
        'batchserve_dispatch_total{model="echo",trigger="idle"} 1.0',
        'batchserve_request_duration_seconds_count{model="echo"} 1.0',
        'batchserve_queue_wait_seconds_count{model="echo"} 1.0',
        'batchserve_batch_duration_seconds_count{model="echo"} 1.0',
        'batchserve_batch_size_bucket{le="32.0",model="echo"} 1.0',
    ]:
        assert line in text, line


def test_unknown_route_and_method_have_the_error_shape(diabetes_client: TestClient) -> None:
    response = diabetes_client.get("/nope")
    assert response.status_code == 404
    assert error_of(response)["type"] == "not_found"
    response = diabetes_client.get("/predict")
    assert response.status_code == 405


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/predict/echo/"), ("POST", "/predict/"), ("GET", "/models/"), ("GET", "/models/echo/"),
    ("GET", "/v2/models/echo/ready/"), ("POST", "/v2/models/echo/infer/"),
])
def test_a_trailing_slash_is_a_404_that_says_so(diabetes_client: TestClient, method: str, path: str) -> None:
    response = diabetes_client.request(method, path, json={"inputs": [1]}, follow_redirects=False)
    assert response.status_code == 404, (response.status_code, response.headers, response.text)
    error = response.json()["error"]
    message = error if path.startswith("/v2/") else error["message"]  # v2's error shape there
    assert message == (f"no route {method} {path}: paths take no trailing slash; send it to "
                       f"{path.rstrip('/')}")


def test_openapi_documents_predict(diabetes_client: TestClient) -> None:
    spec = diabetes_client.get("/openapi.json").json()
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["required"] == ["model", "inputs"]
    assert "504" in spec["paths"]["/predict"]["post"]["responses"]
    assert diabetes_client.get("/docs").status_code == 200


def test_draining_refuses_new_requests_with_503(diabetes_client: TestClient) -> None:
    state = diabetes_client.app.state.batchserve  # type: ignore[attr-defined]
    state.draining = True
    response = diabetes_client.post("/predict", json={"model": "echo", "inputs": [1]})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert error_of(response)["type"] == "shutting_down"
    ready = diabetes_client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["draining"] is True


def test_a_broken_batching_loop_shows_in_readyz(diabetes_client: TestClient) -> None:
    state = diabetes_client.app.state.batchserve  # type: ignore[attr-defined]
    state.registry.get("echo").batcher.broken = "batching loop stopped: test"
    ready = diabetes_client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["models"]["echo"] == {"state": "failed",
                                              "reason": "batching loop stopped: test"}
    response = diabetes_client.post("/predict", json={"model": "echo", "inputs": [1]})
    assert response.status_code == 503
    assert "batching loop stopped" in error_of(response)["message"]


def test_too_many_items_is_a_413(tmp_path: Path) -> None:
    with make_client(tmp_path, [{"name": "echo", "backend": "echo", "path": "x"}], max_items=3) as client:
        wait_ready(client)
        response = client.post("/predict", json={"model": "echo", "inputs": [1, 2, 3, 4]})
        assert response.status_code == 413
        assert error_of(response)["type"] == "too_many_items"
        assert client.post("/predict", json={"model": "echo", "inputs": [1, 2, 3]}).status_code == 200


def test_each_item_limit_names_itself(tmp_path: Path) -> None:
    # A request's items are capped twice: by the server (BATCHSERVE_MAX_ITEMS, 413) and by the
    # model's max_queue (400: it could never be queued whole); each error says which it hit.
    with make_client(tmp_path, [{"name": "echo", "backend": "echo", "path": "x", "max_queue": 4}],
                     max_items=6) as client:
        wait_ready(client)
        over_queue = client.post("/predict", json={"model": "echo", "inputs": [1] * 5})
        assert over_queue.status_code == 400, over_queue.text
        assert error_of(over_queue) == {"type": "invalid_input", "message": "request has 5 items; model "
                                        "'echo' accepts at most 4 per request (max_queue)"}
        over_server = client.post("/predict", json={"model": "echo", "inputs": [1] * 7})
        assert over_server.status_code == 413, over_server.text
        assert error_of(over_server) == {"type": "too_many_items", "message": "request has 7 items; at "
                                         "most 6 per request (BATCHSERVE_MAX_ITEMS)"}
        assert client.post("/predict", json={"model": "echo", "inputs": [1] * 4}).status_code == 200


def test_json_nested_too_deep_is_a_422(diabetes_client: TestClient) -> None:
    deep = b'{"model": "echo", "inputs": [' + b"[" * 5000 + b"]" * 5000 + b"]}"
    response = diabetes_client.post("/predict", content=deep, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert "depth limit" in error_of(response)["message"]
