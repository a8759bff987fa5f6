"""Small gradient-boosted tree models trained here (no downloads), saved as their libraries' own
model files, and what the tree backends must answer for them: the libraries' own in-process
predictions on the same files, in the backends' output format."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris

ROUNDS = 12
ROWS = 40
"""Rows asked about per model: the first half as they are, the second with missing values."""


@dataclass(frozen=True)
class TreeCase:
    name: str
    """The model's name in the test's models.toml."""
    backend: str
    path: Path
    features: np.ndarray[Any, Any]
    """Rows to ask about, NaN for a missing value."""
    expected: list[Any]
    """What the backend must answer for each row, from the library's own ``predict``."""
    expect: Callable[[np.ndarray[Any, Any]], list[Any]]
    """The library's own answers for any rows, in the backend's format."""
    names: list[str] | None = None
    """Feature names the model file holds, if any."""


def with_missing(features: np.ndarray[Any, Any], seed: int, share: float = 0.2) -> np.ndarray[Any, Any]:
    """A copy of ``features`` with ``share`` of the values of the second half of the rows NaN."""
    rng = np.random.default_rng(seed)
    copy = np.array(features, dtype=np.float64)
    half = len(copy) // 2
    mask = rng.random(copy[half:].shape) < share
    copy[half:][mask] = np.nan
    return copy


def dataset(kind: str) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], list[str]]:
    """Training rows (some values missing, so the trees learn where missing values go), labels
    and feature names, for ``regression``, ``binary`` or ``multiclass``."""
    loader = {"regression": load_diabetes, "binary": load_breast_cancer, "multiclass": load_iris}[kind]
    data = loader()
    names = [str(n).replace(" ", "_").replace("(", "").replace(")", "") for n in data.feature_names]
    rng = np.random.default_rng(7)
    features = np.array(data.data, dtype=np.float64)
    features[rng.random(features.shape) < 0.1] = np.nan
    return features, np.asarray(data.target), names


def ask_rows(features: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """``ROWS`` rows spread over the data set, with missing values in the second half."""
    picked = np.nan_to_num(features[np.linspace(0, len(features) - 1, ROWS).astype(int)], nan=0.0)
    return with_missing(picked, seed=3)


def classifier_outputs(probabilities: np.ndarray[Any, Any]) -> list[dict[str, Any]]:
    """``{"label", "scores"}`` per row of class probabilities (binary: P(class 1))."""
    if probabilities.ndim == 1:
        probabilities = np.stack([1.0 - probabilities, probabilities], axis=1)
    return [{"label": int(p.argmax()), "scores": {str(i): float(v) for i, v in enumerate(p)}}
            for p in probabilities]


def train_xgboost(folder: Path, kind: str, objective: str, suffix: str = ".json",
                  named: bool = True) -> TreeCase:
    import xgboost

    features, target, names = dataset(kind)
    params: dict[str, Any] = {"objective": objective, "max_depth": 3, "nthread": 1, "seed": 0,
                              "tree_method": "hist"}
    if kind == "multiclass":
        params["num_class"] = 3
    train = xgboost.DMatrix(features, label=target, missing=np.nan, feature_names=names if named else None)
    path = folder / f"xgb-{objective.replace(':', '-')}{suffix}"
    xgboost.train(params, train, num_boost_round=ROUNDS).save_model(str(path))
    booster = xgboost.Booster(model_file=str(path))  # the library's own predict, on the same file

    def expect(rows: np.ndarray[Any, Any]) -> list[Any]:
        data = xgboost.DMatrix(rows, missing=np.nan)
        predicted = booster.predict(data, validate_features=False)
        if objective == "multi:softmax":  # the label is predict's; the scores, softmax of the margins
            margins = booster.predict(data, output_margin=True, validate_features=False)
            exp = np.exp(margins - margins.max(axis=1, keepdims=True))
            outputs = classifier_outputs(exp / exp.sum(axis=1, keepdims=True))
            assert [o["label"] for o in outputs] == predicted.astype(int).tolist()
            return outputs
        return predicted.tolist() if kind == "regression" else classifier_outputs(predicted)

    rows = ask_rows(features)
    return TreeCase(path.stem, "xgboost", path, rows, expect(rows), expect, names if named else None)


def train_lightgbm(folder: Path, kind: str) -> TreeCase:
    import lightgbm

    features, target, names = dataset(kind)
    objective = {"regression": "regression", "binary": "binary", "multiclass": "multiclass"}[kind]
    params: dict[str, Any] = {"objective": objective, "num_leaves": 7, "min_data_in_leaf": 5,
                              "num_threads": 1, "seed": 0, "deterministic": True, "verbose": -1}
    if kind == "multiclass":
        params["num_class"] = 3
    train = lightgbm.Dataset(features, label=target, feature_name=names, params={"verbose": -1})
    path = folder / f"lgb-{objective}.txt"
    lightgbm.train(params, train, num_boost_round=ROUNDS).save_model(str(path))
    booster = lightgbm.Booster(model_file=str(path))

    def expect(rows: np.ndarray[Any, Any]) -> list[Any]:
        predicted = np.asarray(booster.predict(rows))
        return predicted.tolist() if kind == "regression" else classifier_outputs(predicted)

    rows = ask_rows(features)
    return TreeCase(path.stem, "lightgbm", path, rows, expect(rows), expect, names)


def all_cases(folder: Path) -> list[TreeCase]:
    """Regression, binary and multi-class models of both libraries (XGBoost as JSON and UBJSON,
    with and without feature names, and ``multi:softmax``, whose file stores no probabilities)."""
    return [
        train_xgboost(folder, "regression", "reg:squarederror"),
        train_xgboost(folder, "binary", "binary:logistic", suffix=".ubj", named=False),
        train_xgboost(folder, "multiclass", "multi:softprob"),
        train_xgboost(folder, "multiclass", "multi:softmax"),
        train_lightgbm(folder, "regression"),
        train_lightgbm(folder, "binary"),
        train_lightgbm(folder, "multiclass"),
    ]


def json_rows(features: np.ndarray[Any, Any]) -> list[list[float | None]]:
    """Rows as JSON items: NaN (missing) as null."""
    return [[None if np.isnan(v) else float(v) for v in row] for row in features]


def assert_outputs(actual: list[Any], expected: list[Any], where: str) -> None:
    """The backend's outputs equal the library's, exactly: the same trees on the same float64
    rows, and JSON carries float64 values unchanged both ways."""
    assert len(actual) == len(expected), where
    for index, (got, want) in enumerate(zip(actual, expected, strict=True)):
        assert got == want, f"{where}, row {index}: {got} != {want}"
