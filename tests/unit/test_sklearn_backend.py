"""The scikit-learn backend on estimators trained here (no downloads)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import joblib
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sklearn.datasets import load_diabetes, load_iris
from sklearn.linear_model import LinearRegression, LogisticRegression

from tests.support import make_client, wait_ready


@pytest.fixture
def named_client(tmp_path: Path) -> tuple[TestClient, LinearRegression, pd.DataFrame]:
    frame, target = load_diabetes(return_X_y=True, as_frame=True)
    estimator = LinearRegression().fit(frame, target)
    joblib.dump(estimator, tmp_path / "named.joblib")
    return make_client(tmp_path, [{"name": "named", "backend": "sklearn",
                                   "path": str(tmp_path / "named.joblib")}]), estimator, frame


def test_items_by_feature_name(named_client: tuple[TestClient, LinearRegression, pd.DataFrame],
                               ) -> None:
    client, estimator, frame = named_client
    with client:
        wait_ready(client)
        rows = frame.iloc[:3]
        items = [dict(reversed(list(row.items()))) for _, row in rows.iterrows()]  # any key order
        response = client.post("/predict", json={"model": "named", "inputs": items})
        assert response.status_code == 200
        assert response.json()["outputs"] == pytest.approx(estimator.predict(rows).tolist())
        plain = client.post("/predict", json={"model": "named", "inputs": rows.values.tolist()})
        assert plain.json()["outputs"] == pytest.approx(estimator.predict(rows).tolist())
        wrong = {**items[0], "colour": 1.0}
        del wrong["age"]
        response = client.post("/predict", json={"model": "named", "inputs": [items[0], wrong]})
        assert response.status_code == 400
        assert response.json()["error"]["message"] == (
            "item 1: feature names do not match: missing ['age'], unknown ['colour']")
        assert client.get("/models/named").json()["input"]["or"]["keys"][0] == "age"


def test_classifier_probabilities(tmp_path: Path) -> None:
    features, target = load_iris(return_X_y=True)
    estimator = LogisticRegression(max_iter=500).fit(features, target)
    joblib.dump(estimator, tmp_path / "iris.joblib")
    with make_client(tmp_path, [
        {"name": "iris", "backend": "sklearn", "path": str(tmp_path / "iris.joblib"),
         "options": {"output": "proba"}},
        {"name": "iris-label", "backend": "sklearn", "path": str(tmp_path / "iris.joblib")},
    ]) as client:
        wait_ready(client)
        response = client.post("/predict", json={"model": "iris", "inputs": features[:2].tolist()})
        [first, _] = response.json()["outputs"]
        expected = estimator.predict_proba(features[:1])[0]
        assert first["label"] == 0
        assert [first["scores"][k] for k in ("0", "1", "2")] == pytest.approx(expected.tolist())
        labels = client.post("/predict", json={"model": "iris-label",
                                                "inputs": features[[0, 100]].tolist()})
        assert labels.json()["outputs"] == [0, 2]


def test_proba_on_a_regressor_fails_to_load_with_a_reason(tmp_path: Path,
                                                          diabetes_path: Path) -> None:
    with make_client(tmp_path, [{"name": "r", "backend": "sklearn", "path": str(diabetes_path),
                                 "options": {"output": "proba"}}]) as client:
        wait_ready(client)
        state = client.get("/readyz").json()["models"]["r"]
        assert state["state"] == "failed"
        assert "has no predict_proba" in state["reason"]


def test_not_an_estimator_fails_to_load(tmp_path: Path) -> None:
    joblib.dump({"weights": [1, 2]}, tmp_path / "dict.joblib")
    (tmp_path / "junk.joblib").write_bytes(b"not a pickle")
    with make_client(tmp_path, [
        {"name": "dict", "backend": "sklearn", "path": str(tmp_path / "dict.joblib")},
        {"name": "junk", "backend": "sklearn", "path": str(tmp_path / "junk.joblib")},
    ]) as client:
        wait_ready(client)
        states = client.get("/readyz").json()["models"]
        assert "holds a dict, not an estimator" in states["dict"]["reason"]
        assert "cannot load" in states["junk"]["reason"]


def test_a_non_finite_output_fails_its_row_alone(tmp_path: Path) -> None:
    from batchserve.errors import RowError

    estimator = LinearRegression().fit([[0.0], [1.0]], [0.0, 1.0])
    estimator.coef_[:] = 1e308  # finite features, but x = 10 overflows to inf
    joblib.dump(estimator, tmp_path / "overflow.joblib")
    with make_client(tmp_path, [{"name": "overflow", "backend": "sklearn",
                                 "path": str(tmp_path / "overflow.joblib")}]) as client:
        wait_ready(client)
        backend = client.app.state.batchserve.registry.get("overflow").backend  # type: ignore[attr-defined]
        outputs = backend.predict_batch([[0.0], [10.0], [0.0]])
        assert isinstance(outputs[1], RowError) and "not finite" in outputs[1].error.message
        assert [outputs[0], outputs[2]] == pytest.approx([estimator.intercept_] * 2)
        response = client.post("/predict", json={"model": "overflow", "inputs": [[0.0], [10.0]]})
        assert response.status_code == 400
        assert response.json()["error"]["message"].startswith("item 1: the model's output is not finite")


def test_a_non_finite_output_fails_its_request_alone_among_its_batch_mates(tmp_path: Path) -> None:
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    estimator = LinearRegression().fit([[0.0], [1.0]], [0.0, 1.0])
    estimator.coef_[:] = 1e308  # x = 10 overflows to inf; 0.5 and 0.25 do not
    joblib.dump(estimator, tmp_path / "overflow.joblib")
    with make_client(tmp_path, [{"name": "overflow", "backend": "sklearn", "max_batch_size": 8,
                                 "path": str(tmp_path / "overflow.joblib")}]) as client:
        wait_ready(client)
        batcher = client.app.state.batchserve.registry.get("overflow").batcher  # type: ignore[attr-defined]
        real, calls = batcher._predict_batch, []
        entered, gate = threading.Event(), threading.Event()

        def held(rows: list[Any]) -> list[Any]:  # the real backend, its first batch held
            calls.append([list(row) for row in rows])
            entered.set()
            gate.wait(10)
            outputs: list[Any] = real(rows)
            return outputs

        batcher._predict_batch = held

        def ask(value: float) -> Any:
            return client.post("/predict", json={"model": "overflow", "inputs": [[value]]})

        with ThreadPoolExecutor(4) as pool:
            first = pool.submit(ask, 0.0)
            assert entered.wait(10)
            mates = [pool.submit(ask, value) for value in (0.5, 10.0, 0.25)]
            give_up = time.monotonic() + 10
            while batcher.queued_rows < 3:
                assert time.monotonic() < give_up
                time.sleep(0.01)
            gate.set()
            answers = [future.result(10) for future in (first, *mates)]
        assert len(calls) == 2 and calls[0] == [[0.0]]  # the three shared one batch, in any order,
        assert sorted(calls[1]) == [[0.25], [0.5], [10.0]]  # that ran once (nothing bisected)
        assert [a.status_code for a in answers] == [200, 200, 400, 200]
        assert "not finite" in answers[2].json()["error"]["message"]
        for answer, value in zip([answers[1], answers[3]], (0.5, 0.25), strict=True):
            assert answer.json()["outputs"] == pytest.approx(estimator.predict([[value]]).tolist())


@pytest.mark.parametrize("outputs", [1, 2])
def test_a_linear_model_predicts_the_same_bits_without_sklearns_per_call_checks(
        tmp_path: Path, outputs: int) -> None:
    import numpy

    features, target = load_diabetes(return_X_y=True)
    targets = target if outputs == 1 else numpy.stack([target, -target], axis=1)
    estimator = LinearRegression().fit(features, targets)
    joblib.dump(estimator, tmp_path / "linear.joblib")
    with make_client(tmp_path, [{"name": "linear", "backend": "sklearn",
                                 "path": str(tmp_path / "linear.joblib")}]) as client:
        wait_ready(client)
        backend = client.app.state.batchserve.registry.get("linear").backend  # type: ignore[attr-defined]
        assert backend._predict != backend.fitted_estimator().predict  # the product, not sklearn's
        for rows in (features[:1], features[:7], features):
            assert backend.predict_batch(rows.tolist()) == estimator.predict(rows).tolist()
        # Rows that skipped preprocess still meet sklearn's checks, and its errors.
        for bad in ([[float("nan")] * 10], [[0.0] * 9], []):
            with pytest.raises(ValueError):
                backend.predict_batch(bad)
        response = client.post("/predict", json={"model": "linear", "inputs": [features[0].tolist()]})
        assert response.status_code == 200
        assert response.json()["outputs"] == estimator.predict(features[:1]).tolist()


def test_a_linear_model_with_its_own_predict_keeps_it() -> None:
    from batchserve.backends.sklearn import linear_predict

    class Shifted(LinearRegression):  # type: ignore[misc]  # sklearn is untyped
        def predict(self, X: Any) -> Any:
            return super().predict(X) + 1.0

    assert linear_predict(Shifted().fit([[0.0], [1.0]], [0.0, 1.0])) is None
    assert linear_predict(LogisticRegression().fit([[0.0], [1.0]], [0, 1])) is None
    assert linear_predict(LinearRegression().fit([[0.0], [1.0]], [0.0, 1.0])) is not None


def test_a_row_is_checked_value_by_value(tmp_path: Path) -> None:
    """Every value an int or a float (not a bool, not a string) and finite, whatever the fast
    check lets through; finite values whose sum overflows are still a valid row."""
    from batchserve.backends.sklearn import SklearnBackend
    from batchserve.config import ModelConfig
    from batchserve.errors import InvalidInput

    joblib.dump(LinearRegression().fit([[0.0, 1.0, 2.0], [1.0, 0.0, 2.0]], [0.0, 1.0]),
                tmp_path / "three.joblib")
    backend = SklearnBackend(ModelConfig(name="three", backend="sklearn", path=tmp_path / "three.joblib"))
    backend.load("cpu")
    good: list[list[object]] = [[0.5, 1, -2.0], [1e308, 1e308, 1e308]]
    for row in good:
        assert backend.preprocess(row, None) == row
    bad: list[tuple[list[object], int]] = [
        ([0.0, float("inf"), 1.0], 1), ([float("nan"), 0.0, 0.0], 0), ([0.0, 0.0, -float("inf")], 2),
        ([0.0, True, 0.0], 1), ([0.0, 1.0, "2"], 2)]
    for row, position in bad:
        with pytest.raises(InvalidInput, match=f"feature {position} must be a finite number"):
            backend.preprocess(row, None)
