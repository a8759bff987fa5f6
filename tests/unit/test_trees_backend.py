"""The xgboost and lightgbm backends in-process: what an item may be (lists or objects by feature
name, null for a missing value, nothing else non-finite), options, per-row failures, threads,
and what the planner reads of them."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from batchserve.backends import backend_class
from batchserve.backends.capabilities import DeviceSupport, SampleItems, TreeEnsemble
from batchserve.backends.trees import TreeBackend
from batchserve.config import ConfigError, ModelConfig, load_models
from batchserve.errors import InvalidInput, RowError
from batchserve_planning.modelsize import model_size
from fastapi.testclient import TestClient

from tests.support import ROOT, make_client, wait_ready, write_models
from tests.support.trees import TreeCase, json_rows, train_lightgbm, train_xgboost


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TreeCase]:
    folder = tmp_path_factory.mktemp("trees")
    return {"reg": train_xgboost(folder, "regression", "reg:squarederror"),
            "bin": train_xgboost(folder, "binary", "binary:logistic", named=False),
            "lgb": train_lightgbm(folder, "multiclass")}


@pytest.fixture
def client(tmp_path: Path, models: dict[str, TreeCase]) -> Iterator[TestClient]:
    with make_client(tmp_path, [
        {"name": "reg", "backend": "xgboost", "path": str(models["reg"].path)},
        {"name": "bin", "backend": "xgboost", "path": str(models["bin"].path)},
        {"name": "lgb", "backend": "lightgbm", "path": str(models["lgb"].path),
         "options": {"classes": ["setosa", "versicolor", "virginica"], "threads": 1}},
    ]) as test_client:
        wait_ready(test_client)
        yield test_client


def error(client: TestClient, model: str, inputs: Any) -> tuple[int, str]:
    response = client.post(f"/predict/{model}", json={"inputs": inputs})
    return response.status_code, response.json()["error"]["message"]


def test_items_that_are_not_rows_of_numbers_or_null_are_400s_naming_item_and_feature(
        client: TestClient) -> None:
    row = [0.0] * 10
    assert error(client, "reg", [row, row[:3]]) == (400, "item 1: expected 10 features, got 3")
    assert error(client, "reg", [[*row[:9], "7"]]) == (
        400, "item 0: feature 9 must be a number or null, got '7'")
    assert error(client, "reg", [[True, *row[1:]]]) == (
        400, "item 0: feature 0 must be a number or null, got True")
    assert error(client, "reg", [row, 5]) == (
        400, "item 1: expected a list of 10 numbers or an object of feature values, got int")
    assert error(client, "bin", [7]) == (400, "item 0: expected a list of 30 numbers, got int")
    status, message = error(client, "reg", [[[1.0], *row[1:]]])
    assert status == 400 and message.startswith("item 0: feature 0 must be a number or null")
    assert client.get("/healthz").status_code == 200


def test_infinity_is_refused_but_null_and_nan_are_missing_values(models: dict[str, TreeCase]) -> None:
    backend = backend_class("xgboost")(ModelConfig(name="m", backend="xgboost", path=models["reg"].path))
    backend.load("cpu")
    row: list[Any] = [0.5] * 10
    for bad in (math.inf, -math.inf, 10**400):
        with pytest.raises(InvalidInput, match="feature 3 must be finite"):
            backend.preprocess([*row[:3], bad, *row[4:]], None)
    with_null = backend.preprocess([None, *row[1:]], None)
    with_nan = backend.preprocess([math.nan, *row[1:]], None)
    assert math.isnan(with_null[0]) and math.isnan(with_nan[0])
    assert backend.predict_batch([with_null]) == backend.predict_batch([with_nan])
    import xgboost

    booster = xgboost.Booster(model_file=str(models["reg"].path))
    expected = booster.predict(xgboost.DMatrix(np.array([with_nan]), missing=np.nan), validate_features=False)
    assert backend.predict_batch([with_null]) == expected.tolist()  # missing, as the library has it


def test_objects_by_feature_name_must_name_every_feature(client: TestClient,
                                                         models: dict[str, TreeCase]) -> None:
    names = models["reg"].names
    assert names is not None
    item: dict[str, Any] = dict.fromkeys(names, 0.1)
    item[names[2]] = None  # a missing value is null
    response = client.post("/predict/reg", json={"inputs": [item]})
    assert response.status_code == 200, response.text
    listed = client.post("/predict/reg", json={"inputs": [[0.1, 0.1, None, *[0.1] * 7]]})
    assert response.json()["outputs"] == listed.json()["outputs"]
    del item[names[0]]
    item["colour"] = 1.0
    status, message = error(client, "reg", [item])
    assert status == 400 and message.startswith(
        f"item 0: feature names do not match: missing ['{names[0]}'], unknown ['colour']")
    assert error(client, "bin", [{"a": 1}])[1].startswith("item 0: this model file names no features")
    status, message = error(client, "reg", [{**dict.fromkeys(names, 0.0), names[4]: "x"}])
    assert (status, message) == (400, f"item 0: feature '{names[4]}' must be a number or null, got 'x'")


def test_class_names_label_the_scores(client: TestClient, models: dict[str, TreeCase]) -> None:
    case = models["lgb"]
    response = client.post("/predict/lgb", json={"inputs": json_rows(case.features[:5])})
    assert response.status_code == 200
    names = ["setosa", "versicolor", "virginica"]
    for output, expected in zip(response.json()["outputs"], case.expected[:5], strict=True):
        assert output["label"] == names[expected["label"]]
        assert list(output["scores"]) == names
        assert list(output["scores"].values()) == pytest.approx(list(expected["scores"].values()))
    described = client.get("/models/lgb").json()
    assert described["output"]["objective"] == "multiclass"


def test_options_that_do_not_fit_the_model_file_fail_its_load(tmp_path: Path,
                                                              models: dict[str, TreeCase]) -> None:
    with make_client(tmp_path, [
        {"name": "two-of-three", "backend": "lightgbm", "path": str(models["lgb"].path),
         "options": {"classes": ["a", "b"]}},
        {"name": "classes-of-a-regressor", "backend": "xgboost", "path": str(models["reg"].path),
         "options": {"classes": ["a", "b"]}},
        {"name": "lgb-on-cuda", "backend": "lightgbm", "path": str(models["lgb"].path), "device": "cuda"},
        {"name": "missing", "backend": "xgboost", "path": str(tmp_path / "nowhere.json")},
    ]) as client:
        wait_ready(client)
        states = client.get("/readyz").json()["models"]
    assert "options.classes names 2 classes" in states["two-of-three"]["reason"]
    assert "options.classes is for classifiers" in states["classes-of-a-regressor"]["reason"]
    assert "CPU only" in states["lgb-on-cuda"]["reason"]
    # relative to the repository root (the folder above models.toml's): /readyz answers anyone
    assert states["missing"]["reason"] == f"model file not found: {tmp_path.name}/nowhere.json"


def test_each_batch_runs_on_the_configured_threads(models: dict[str, TreeCase]) -> None:
    def loaded(backend: str, case: str, **config: Any) -> Any:
        instance = backend_class(backend)(ModelConfig(name="m", backend=backend,
                                                      path=models[case].path, **config))
        instance.load("cpu")
        return instance

    xgb = loaded("xgboost", "reg", options={"threads": 3})
    nthread = json.loads(xgb._booster.save_config())["learner"]["generic_param"]["nthread"]
    assert int(nthread) == 3
    cores = len(os.sched_getaffinity(0))
    assert loaded("xgboost", "reg", instances=2).threads == max(1, cores // 2)
    lgb = loaded("lightgbm", "lgb", instances=3)
    assert lgb.threads == max(1, cores // 3) and lgb._boosters.qsize() == 3  # a booster per instance


def test_a_row_whose_prediction_is_not_finite_fails_alone(tmp_path: Path) -> None:
    """A regressor whose leaves for x0 < 0 sum past float32's range: those rows are a per-row
    error (JSON has no infinity), the others are answered."""
    import xgboost

    features = np.array([[-1.0], [1.0]] * 20)
    booster = xgboost.train({"max_depth": 1, "nthread": 1}, xgboost.DMatrix(features, label=features[:, 0]),
                            num_boost_round=2)
    model = json.loads(booster.save_raw("json"))
    for tree in model["learner"]["gradient_booster"]["model"]["trees"]:
        left = tree["left_children"][0]
        tree["split_conditions"][left] = tree["base_weights"][left] = 3e38
    path = tmp_path / "huge.json"
    path.write_text(json.dumps(model))
    backend = backend_class("xgboost")(ModelConfig(name="m", backend="xgboost", path=path))
    backend.load("cpu")
    outputs = backend.predict_batch([[-1.0], [1.0], [-2.0]])
    assert isinstance(outputs[0], RowError) and isinstance(outputs[2], RowError)
    assert "not finite" in outputs[0].error.message
    assert isinstance(outputs[1], float) and math.isfinite(outputs[1])


@pytest.mark.parametrize(("backend", "case", "devices"), [("xgboost", "reg", ("cpu", "cuda")),
                                                          ("lightgbm", "lgb", ("cpu",))])
def test_the_planner_reads_the_trees_through_a_capability(
        backend: str, case: str, devices: tuple[str, ...], models: dict[str, TreeCase]) -> None:
    cls = backend_class(backend)
    assert issubclass(cls, DeviceSupport) and cls.supported_devices() == devices
    instance: Any = cls(ModelConfig(name="m", backend=backend, path=models[case].path))
    offered: object = instance
    assert isinstance(offered, TreeEnsemble) and isinstance(offered, SampleItems)
    instance.load("cpu")
    size = model_size(instance)
    assert size["kind"] == "trees" and size["artifact_bytes"] == models[case].path.stat().st_size
    assert size["features"] == len(models[case].features[0])
    if backend == "xgboost":  # cross-checked against the library's own table of the trees
        table = instance._booster.trees_to_dataframe()
        assert size["trees"] == table["Tree"].nunique() == 12
        assert size["leaves"] == int((table["Feature"] == "Leaf").sum())
        assert size["max_depth"] == 3  # max_depth = 3, on enough rows to reach it
    else:
        table = instance._one.trees_to_dataframe()
        assert size["trees"] == table["tree_index"].nunique() == 12 * 3
        assert size["leaves"] == int(table["split_feature"].isna().sum())
        assert size["max_depth"] == int(table["node_depth"].max()) - 1  # its root is at depth 1
    assert size["library"].startswith(backend) and size["objective"] == instance.objective


def test_importing_the_server_imports_neither_library() -> None:
    code = ("import sys, batchserve.app, batchserve.backends.xgboost, batchserve.backends.lightgbm, "
            "batchserve.v2.codec; print(sorted(m for m in ('xgboost', 'lightgbm') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={"PYTHONPATH": str(ROOT / "server")})
    assert result.stdout.strip() == "[]"


def test_tree_backends_share_the_base_and_the_v2_codec() -> None:
    from batchserve.v2 import codec

    for name in ("xgboost", "lightgbm"):
        cls = backend_class(name)
        assert issubclass(cls, TreeBackend) and not cls.loads_pickles
        instance = cls(ModelConfig(name="m", backend=name, path=Path("unused")))
        assert isinstance(codec.codec_for(instance), codec.FeatureRowsCodec)


@pytest.mark.parametrize(("options", "problem"), [
    ({"classes": ["a", "a"]}, "field 'options.classes': Value error, class names must be distinct"),
    ({"classes": ["a"]},
     "field 'options.classes': List should have at least 2 items after validation, not 1"),
    ({"threads": 0}, "field 'options.threads': Input should be greater than or equal to 1"),
    ({"output": "proba"}, "field 'options.output': Extra inputs are not permitted"),
])
def test_options_are_checked_at_start(tmp_path: Path, options: dict[str, Any], problem: str) -> None:
    for backend in ("xgboost", "lightgbm"):
        path = write_models(tmp_path / "models.toml", [
            {"name": "m", "backend": backend, "path": "m.json", "options": options}])
        with pytest.raises(ConfigError) as caught:
            load_models(path)
        assert str(caught.value).endswith(f"model 'm': {problem}")


def test_a_categorical_feature_is_its_integer_code(tmp_path: Path) -> None:
    import pandas as pd
    import xgboost

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"size": rng.random(300), "colour": pd.Categorical(rng.integers(0, 5, 300))})
    target = frame["size"] + (frame["colour"].cat.codes == 3) * 2
    train = xgboost.DMatrix(frame, label=target, enable_categorical=True)
    booster = xgboost.train({"max_depth": 3, "nthread": 1, "max_cat_to_onehot": 1}, train, num_boost_round=5)
    booster.save_model(str(tmp_path / "categorical.json"))
    backend = backend_class("xgboost")(ModelConfig(name="m", backend="xgboost",
                                                   path=tmp_path / "categorical.json"))
    backend.load("cpu")
    codes = frame["colour"].cat.codes[:20]
    rows = [[float(s), int(c)] for s, c in zip(frame["size"][:20], codes, strict=True)]
    expected = booster.predict(xgboost.DMatrix(frame[:20], enable_categorical=True))
    assert backend.predict_batch([backend.preprocess(row, None) for row in rows]) == expected.tolist()
