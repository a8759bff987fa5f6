"""The onnx backend on graphs the tests write (tests/support/graphs.py): the graph's tensors
through /predict and v2, items checked against the graph, and every bad graph a load error that
leaves the other models served."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from batchserve.backends.onnx import OnnxBackend
from batchserve.config import ModelConfig
from batchserve.errors import RowError
from fastapi.testclient import TestClient

from tests.support import make_client, wait_ready
from tests.support.graphs import TABLE, WEIGHTS, linear, lookup


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("graphs")
    linear(folder / "linear.onnx")
    lookup(folder / "lookup.onnx")
    return folder


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, graphs: Path) -> Iterator[TestClient]:
    models: list[dict[str, Any]] = [
        {"name": "linear", "backend": "onnx", "path": str(graphs / "linear.onnx")},
        {"name": "lookup", "backend": "onnx", "path": str(graphs / "lookup.onnx"), "max_wait_ms": 5}]
    with make_client(tmp_path_factory.mktemp("onnx"), models) as test_client:
        wait_ready(test_client)
        yield test_client


def error(response: Any) -> str:
    assert response.status_code == 400, response.text
    found = response.json()["error"]  # v2's is the message, /predict's an object holding it
    message: str = found if isinstance(found, str) else found["message"]
    return message


def test_a_graph_of_one_input_takes_rows_and_answers_the_graphs_output(client: TestClient) -> None:
    rows = [[1.0, 2.0, 3.0], [0, 0, 1]]
    response = client.post("/predict", json={"model": "linear", "inputs": rows})
    assert response.status_code == 200, response.text
    assert response.json()["outputs"] == (np.array(rows, dtype=np.float32) @ WEIGHTS).tolist()


def test_v2_declares_and_takes_the_graphs_own_tensors(client: TestClient) -> None:
    metadata = client.get("/v2/models/lookup").json()
    assert metadata["inputs"] == [{"name": "ids", "datatype": "INT64", "shape": [-1, -1]},
                                  {"name": "scale", "datatype": "FP32", "shape": [-1]}]
    assert metadata["outputs"] == [{"name": "vectors", "datatype": "FP32", "shape": [-1, 2]},
                                   {"name": "count", "datatype": "INT64", "shape": [-1]}]
    body = {"inputs": [{"name": "ids", "datatype": "INT64", "shape": [2, 3], "data": [1, 2, 3, 0, 0, 1]},
                       {"name": "scale", "datatype": "FP32", "shape": [2], "data": [1.0, 2.0]}]}
    response = client.post("/v2/models/lookup/infer", json=body)
    assert response.status_code == 200, response.text
    vectors, count = response.json()["outputs"]
    expected = TABLE[[[1, 2, 3], [0, 0, 1]]].sum(axis=1) * np.array([[1.0], [2.0]])
    assert vectors == {"name": "vectors", "datatype": "FP32", "shape": [2, 2],
                       "data": expected.reshape(-1).tolist()}
    assert count == {"name": "count", "datatype": "INT64", "shape": [2], "data": [3, 3]}
    linear_meta = client.get("/v2/models/linear").json()
    assert linear_meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}]


def test_rows_of_different_free_axes_run_in_one_request(client: TestClient) -> None:
    items: list[dict[str, Any]] = [{"ids": [1], "scale": 1.0}, {"ids": [1, 2, 3, 4], "scale": 0.5},
                                   {"ids": [9, 9], "scale": 1}]
    response = client.post("/predict", json={"model": "lookup", "inputs": items})
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    for item, output in zip(items, outputs, strict=True):
        expected = TABLE[item["ids"]].sum(axis=0) * item["scale"]
        assert output == {"vectors": expected.tolist(), "count": len(item["ids"])}


@pytest.mark.parametrize(("model", "item", "expected"), [
    ("linear", [1, 2], "input 'x': expected shape [3] (-1: any size), got [2]"),
    ("linear", [[1, 2, 3]], "input 'x': expected shape [3]"),
    ("linear", ["a", "b", "c"], "input 'x': expected numbers (FP32), got strings"),
    ("linear", [1, None, 3], "input 'x': expected numbers (FP32), got mixed values"),
    ("linear", [1e39, 0, 0], "input 'x': values outside FP32's range"),
    ("lookup", {"ids": [1.5], "scale": 1.0}, "input 'ids': expected integers (INT64), got fractions"),
    ("lookup", {"ids": [[1], [2, 3]], "scale": 1.0}, "input 'ids': not a rectangular array"),
    ("lookup", {"ids": [], "scale": 1.0}, "input 'ids': an empty axis"),
    ("lookup", {"ids": [1]}, "expected an object of the graph's inputs ['ids', 'scale'], got ['ids']"),
    ("lookup", [1, 2], "expected an object of the graph's inputs ['ids', 'scale'], got list"),
])
def test_an_item_unlike_the_graphs_inputs_is_a_400_naming_it(
        client: TestClient, model: str, item: Any, expected: str) -> None:
    good = [1, 2, 3] if model == "linear" else {"ids": [1], "scale": 1.0}
    message = error(client.post("/predict", json={"model": model, "inputs": [good, item]}))
    assert message.startswith(f"item 1: {expected}"), message


def test_a_v2_tensor_of_the_wrong_type_or_name_is_a_400(client: TestClient) -> None:
    fractions = {"inputs": [{"name": "ids", "datatype": "FP32", "shape": [1, 1], "data": [1.5]},
                            {"name": "scale", "datatype": "FP32", "shape": [1], "data": [1.0]}]}
    assert "expected integers" in error(client.post("/v2/models/lookup/infer", json=fractions))
    wrong = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}
    assert "it takes ['x']" in error(client.post("/v2/models/linear/infer", json=wrong))
    rows = {"inputs": [{"name": "ids", "datatype": "INT64", "shape": [2, 1], "data": [1, 2]},
                       {"name": "scale", "datatype": "FP32", "shape": [1], "data": [1.0]}]}
    assert "first axes differ" in error(client.post("/v2/models/lookup/infer", json=rows))


def test_a_row_the_graph_cannot_compute_fails_alone(graphs: Path) -> None:
    """An id past the table's 10 rows passes the type checks but fails in the runtime: its row
    gets a 400, the rows batched with it their outputs."""
    backend = OnnxBackend(ModelConfig(name="lookup", backend="onnx", path=graphs / "lookup.onnx"))
    backend.load("cpu")
    rows = [backend.preprocess({"ids": ids, "scale": 1.0}, None) for ids in ([1, 2], [3, 30], [4, 5])]
    first, bad, last = backend.predict_batch(rows)
    assert isinstance(bad, RowError) and "cannot compute this item" in bad.error.message
    assert first == {"vectors": TABLE[[1, 2]].sum(axis=0).tolist(), "count": 2}
    assert last == {"vectors": TABLE[[4, 5]].sum(axis=0).tolist(), "count": 2}


def test_bad_graphs_fail_to_load_with_the_reason_and_the_others_are_served(tmp_path: Path) -> None:
    (tmp_path / "junk.onnx").write_bytes(b"a text file, not a graph")
    models: list[dict[str, Any]] = [
        {"name": "good", "backend": "onnx", "path": str(linear(tmp_path / "good.onnx"))},
        {"name": "junk", "backend": "onnx", "path": str(tmp_path / "junk.onnx")},
        {"name": "missing", "backend": "onnx", "path": str(tmp_path / "absent.onnx")},
        {"name": "opset", "backend": "onnx", "path": str(linear(tmp_path / "opset.onnx", opset=99))},
        {"name": "fixed4", "backend": "onnx", "path": str(linear(tmp_path / "fixed4.onnx", batch=4))},
        {"name": "fixed1", "backend": "onnx", "path": str(linear(tmp_path / "fixed1.onnx", batch=1))},
        {"name": "one", "backend": "onnx", "path": str(tmp_path / "fixed1.onnx"), "max_batch_size": 1},
    ]
    with make_client(tmp_path, models) as client:
        wait_ready(client)
        states = client.get("/readyz").json()["models"]
        assert states["good"]["state"] == states["one"]["state"] == "ready"
        reasons = {name: str(states[name]["reason"]) for name in ("junk", "missing", "opset", "fixed4",
                                                                  "fixed1")}
        assert all(states[name]["state"] == "failed" for name in reasons)
        assert "not an ONNX graph" in reasons["junk"]
        assert "ONNX graph not found" in reasons["missing"]
        assert "operator set this onnxruntime lacks" in reasons["opset"] and "99" in reasons["opset"]
        assert "input 'x' has a fixed batch axis of 4" in reasons["fixed4"]
        assert "fixed batch axis of 1" in reasons["fixed1"] and "max_batch_size = 1" in reasons["fixed1"]
        for name in ("good", "one"):
            response = client.post(f"/predict/{name}", json={"inputs": [[1, 1, 1], [0, 1, 0]]})
            assert response.status_code == 200, response.text
            assert response.json()["outputs"] == (np.array([[1, 1, 1], [0, 1, 0]]) @ WEIGHTS).tolist()


def test_a_scikit_learn_model_converted_by_skl2onnx_answers_as_the_sklearn_backend(
        tmp_path: Path, diabetes_path: Path, diabetes: tuple[np.ndarray, Any]) -> None:
    """docs/runtimes.md, "scikit-learn through ONNX Runtime": the demo regressor's graph, in
    double precision, served by the onnx backend, predicts what the sklearn backend does."""
    from skl2onnx import to_onnx

    features, estimator = diabetes
    graph = tmp_path / "diabetes.onnx"
    graph.write_bytes(to_onnx(estimator, features[:1], target_opset=17).SerializeToString())
    models: list[dict[str, Any]] = [
        {"name": "sklearn", "backend": "sklearn", "path": str(diabetes_path)},
        {"name": "onnx", "backend": "onnx", "path": str(graph)}]
    rows = features[:16].tolist()
    with make_client(tmp_path, models) as client:
        wait_ready(client)
        answers = [client.post(f"/predict/{name}", json={"inputs": rows}).json()["outputs"]
                   for name in ("sklearn", "onnx")]
        metadata = client.get("/v2/models/onnx").json()
    assert metadata["inputs"] == [{"name": "X", "datatype": "FP64", "shape": [-1, 10]}]
    assert [value for [value] in answers[1]] == pytest.approx(answers[0], rel=1e-12)


def test_a_graph_unlike_its_preset_fails_to_load_saying_what_the_preset_wants(tmp_path: Path) -> None:
    text_folder = tmp_path / "text"
    text_folder.mkdir()
    linear(text_folder / "model.onnx")
    models: list[dict[str, Any]] = [
        {"name": "image", "backend": "onnx-image", "path": str(linear(tmp_path / "linear.onnx"))},
        {"name": "text", "backend": "onnx-classifier", "path": str(text_folder)},
        {"name": "vectors", "backend": "onnx-embedding", "path": str(text_folder),
         "options": {"pooling": "mean"}},
        {"name": "good", "backend": "onnx", "path": str(tmp_path / "linear.onnx")}]
    with make_client(tmp_path, models) as client:
        wait_ready(client)
        states = client.get("/readyz").json()["models"]
        assert states["good"]["state"] == "ready"
        image = str(states["image"]["reason"])
        assert "do not match the onnx-image preset" in image and "inputs x FP32 [-1, 3]" in image
        for name, preset in (("text", "onnx-classifier"), ("vectors", "onnx-embedding")):
            reason = str(states[name]["reason"])
            assert f"graph's inputs ['x'] do not match the {preset} preset" in reason, reason
            assert "input_ids and attention_mask" in reason
