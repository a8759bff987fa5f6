"""XGBoost and LightGBM models from their own model files, served by a real server: the answers
equal the libraries' own in-process predictions on the same files (regression, binary and
multi-class; with and without missing values; each row alone, in one request, concurrently,
over v2 tensors), and a corrupt or truncated model file fails that model only."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from tests.support import ServerProcess, running_server, write_models
from tests.support.trees import TreeCase, all_cases, assert_outputs, json_rows, train_xgboost

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> list[TreeCase]:
    return all_cases(tmp_path_factory.mktemp("trees"))


@pytest.fixture(scope="module")
def server(cases: list[TreeCase], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("trees-config")
    config = write_models(folder / "models.toml", [
        {"name": case.name, "backend": case.backend, "path": str(case.path), "max_batch_size": 16,
         "max_wait_ms": 5, "instances": 2} for case in cases])
    with running_server(config) as process:
        yield process


def batch_counters(client: httpx.Client, model: str) -> tuple[float, float]:
    """Rows and batches the model has run, from /metrics."""
    values = {}
    for line in client.get("/metrics").text.splitlines():
        for name in ("batchserve_batch_size_sum", "batchserve_batch_size_count"):
            if line.startswith(f'{name}{{model="{model}"}} '):
                values[name] = float(line.split()[-1])
    return values["batchserve_batch_size_sum"], values["batchserve_batch_size_count"]


def test_answers_equal_the_libraries_alone_batched_and_concurrently(
        server: ServerProcess, cases: list[TreeCase]) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for case in cases:
            rows = json_rows(case.features)
            assert any(None in row for row in rows) and not all(None in row for row in rows)

            rows_before, batches_before = batch_counters(client, case.name)
            response = client.post(f"/predict/{case.name}", json={"inputs": rows})  # 40 rows, batches of 16
            assert response.status_code == 200, response.text
            assert_outputs(response.json()["outputs"], case.expected, f"{case.name}, one request")
            rows_after, batches_after = batch_counters(client, case.name)
            assert rows_after - rows_before == len(rows)
            assert batches_after - batches_before < len(rows)  # rows were computed together

            alone = [client.post(f"/predict/{case.name}", json={"inputs": [row]}).json()["outputs"][0]
                     for row in rows]
            assert_outputs(alone, case.expected, f"{case.name}, each row alone")

            def ask(row: list[float | None], name: str = case.name) -> Any:
                answer = client.post(f"/predict/{name}", json={"inputs": [row]})
                assert answer.status_code == 200, answer.text
                return answer.json()["outputs"][0]

            with ThreadPoolExecutor(8) as pool:
                together = list(pool.map(ask, rows))
            assert_outputs(together, case.expected, f"{case.name}, concurrent requests")


def test_items_by_feature_name_equal_the_lists(server: ServerProcess, cases: list[TreeCase]) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for case in cases:
            if case.names is None:
                response = client.post(f"/predict/{case.name}", json={"inputs": [{"a": 1.0}]})
                assert response.status_code == 400
                assert "names no features" in response.json()["error"]["message"]
                continue
            items = [dict(reversed(list(zip(case.names, row, strict=True))))  # any key order
                     for row in json_rows(case.features)]
            response = client.post(f"/predict/{case.name}", json={"inputs": items})
            assert response.status_code == 200, response.text
            assert_outputs(response.json()["outputs"], case.expected, f"{case.name}, by name")
            described = client.get(f"/models/{case.name}").json()
            assert described["input"]["or"]["keys"] == case.names


@pytest.mark.parametrize("datatype", ["FP64", "FP32"])
def test_v2_tensors_with_nan_for_missing_equal_the_libraries(
        server: ServerProcess, cases: list[TreeCase], datatype: str) -> None:
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    for case in cases:
        features = case.features.astype(np.float32 if datatype == "FP32" else np.float64)
        tensor = triton.InferInput("input", list(features.shape), datatype)
        tensor.set_data_from_numpy(features, binary_data=True)  # NaN travels as itself
        result = client.infer(case.name, [tensor])
        # what the library answers for the rows as sent (FP32 rounds them)
        expected = case.expect(features.astype(np.float64))
        if isinstance(expected[0], dict):
            labels = [str(e["label"]) for e in expected]
            assert [label.decode() for label in result.as_numpy("label")] == labels, case.name
            scores = np.array([list(e["scores"].values()) for e in expected])
            np.testing.assert_array_equal(result.as_numpy("probabilities"), scores)
        else:
            np.testing.assert_array_equal(result.as_numpy("output"), expected)
        metadata = client.get_model_metadata(case.name)
        assert metadata["inputs"][0]["shape"] == [-1, features.shape[1]]


def test_infinity_in_a_v2_tensor_is_a_400_naming_the_item_and_the_feature(
        server: ServerProcess, cases: list[TreeCase]) -> None:
    case = cases[0]
    features = case.features[:3].copy()
    features[2, 1] = np.inf
    tensor = triton.InferInput("input", list(features.shape), "FP64")
    tensor.set_data_from_numpy(features, binary_data=True)
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    with pytest.raises(triton.InferenceServerException) as caught:
        client.infer(case.name, [tensor])
    assert caught.value.status() == "400"
    assert "item 2: feature 1 must be finite" in str(caught.value.message())
    assert httpx.get(f"{server.url}/healthz").status_code == 200


def wait_loaded(server: ServerProcess, timeout_s: float = 120) -> dict[str, Any]:
    """/readyz's models once none is loading any more (some may have failed)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(f"the server exited ({server.process.returncode}):\n{server.log_tail(40)}")
        try:
            models: dict[str, Any] = httpx.get(f"{server.url}/readyz", timeout=5).json()["models"]
        except httpx.TransportError:
            models = {}
        if models and all(m["state"] != "loading" for m in models.values()):
            return models
        time.sleep(0.1)
    raise AssertionError(f"models still loading after {timeout_s} s:\n{server.log_tail(40)}")


def test_a_corrupt_or_truncated_model_file_fails_that_model_only(tmp_path: Path,
                                                                 cases: list[TreeCase]) -> None:
    good = cases[0]
    lgb = next(c for c in cases if c.backend == "lightgbm")
    xgb_json, lgb_text = good.path.read_bytes(), lgb.path.read_bytes()
    ubj_case = train_xgboost(tmp_path, "binary", "binary:logistic", suffix=".ubj")
    ubj = ubj_case.path.read_bytes()
    broken = {
        "xgb-truncated.json": xgb_json[: len(xgb_json) // 2],
        "xgb-garbage.json": b"\x00\x01 not a model",
        "xgb-truncated.ubj": ubj[: len(ubj) // 3],
        "xgb-empty.json": b"",
        "xgb-binary.model": xgb_json,  # a suffix XGBoost would read as its legacy binary format
        # valid JSON, a node index out of range: predicting with it reads memory XGBoost does not
        # own (a segfault, or garbage, depending on what lies there)
        "xgb-bad-node.json": xgb_json.replace(b'"left_children":[1,', b'"left_children":[99999,', 1),
        "lgb-bad-node.txt": re.sub(rb"\nleft_child=-?[0-9]+", b"\nleft_child=-999", lgb_text, count=1),
        "lgb-truncated.txt": lgb_text[: len(lgb_text) // 2],
        "lgb-head.txt": lgb_text[: lgb_text.index(b"Tree=0")],  # the header, no trees
        "lgb-garbage.txt": b"tree\nversion=v4\nnum_class=banana\n",
    }
    models: list[dict[str, Any]] = [
        {"name": "good", "backend": good.backend, "path": str(good.path)},
        {"name": "good-pinned", "backend": good.backend, "path": str(good.path),
         "sha256": hashlib.sha256(xgb_json).hexdigest()},
        {"name": "lgb-pinned", "backend": "lightgbm", "path": str(lgb.path),
         "sha256": hashlib.sha256(lgb_text).hexdigest()},
        {"name": "ubj-pinned", "backend": "xgboost", "path": str(ubj_case.path),  # read as UBJSON
         "sha256": hashlib.sha256(ubj).hexdigest()},
    ]
    for filename, content in broken.items():
        (tmp_path / filename).write_bytes(content)
        backend = "lightgbm" if filename.startswith("lgb") else "xgboost"
        models.append({"name": filename, "backend": backend, "path": str(tmp_path / filename)})
    # pinned to its own (truncated) bytes: the pin holds, the library refuses it, through the
    # private path the registry hands the backend, and the message names the configured file
    truncated = tmp_path / "xgb-truncated.json"
    models.append({"name": "pinned-truncated", "backend": "xgboost", "path": str(truncated),
                   "sha256": hashlib.sha256(truncated.read_bytes()).hexdigest()})
    config = write_models(tmp_path / "models.toml", models)
    server = ServerProcess(config)
    try:
        states = wait_loaded(server)
        assert {states[name]["state"] for name in ("good", "good-pinned", "lgb-pinned", "ubj-pinned")} == {
            "ready"}
        for name in [*broken, "pinned-truncated"]:
            state = states[name]
            assert state["state"] == "failed", (name, state)
            path = truncated if name == "pinned-truncated" else tmp_path / name
            # named relative to the repository root (the folder above models.toml's)
            assert str(path.relative_to(tmp_path.parent)) in state["reason"], (name, state)
        assert "cannot load" in states["xgb-truncated.json"]["reason"]
        assert "tree 0: node 0: children 99999" in states["xgb-bad-node.json"]["reason"]
        assert "child -999 is not a node" in states["lgb-bad-node.txt"]["reason"]
        # cut inside a tree: the check names it (LightGBM itself would abort the process)
        assert re.search(r"LightGBM model file: tree \d+: ", states["lgb-truncated.txt"]["reason"])
        assert ".json or .ubj" in states["xgb-binary.model"]["reason"]
        assert "batchserve-pinned" not in states["pinned-truncated"]["reason"]
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for name, case in (("good", good), ("good-pinned", good), ("lgb-pinned", lgb),
                               ("ubj-pinned", ubj_case)):
                response = client.post(f"/predict/{name}", json={"inputs": json_rows(case.features)})
                assert response.status_code == 200, response.text
                assert_outputs(response.json()["outputs"], case.expected, name)
            refused = client.post("/predict/lgb-truncated.txt", json={"inputs": [[0.0] * 10]})
            assert refused.status_code == 503
    finally:
        server.close()
