"""The scikit-learn backend on estimators trained here (no downloads)."""

from __future__ import annotations

from pathlib import Path

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
