from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from batchserve.app import create_app
from batchserve.config import load_models
from batchserve.settings import ServerSettings
from fastapi.testclient import TestClient
from sklearn.datasets import load_diabetes
from sklearn.linear_model import LinearRegression

from tests.support import PLUGINS, write_models


def pytest_configure(config: pytest.Config) -> None:
    # Make the test plugin distribution (tests/plugins) discoverable through entry points.
    sys.path.insert(0, str(PLUGINS))


@pytest.fixture(scope="session")
def diabetes() -> tuple[np.ndarray, LinearRegression]:
    features, target = load_diabetes(return_X_y=True)
    return features, LinearRegression().fit(features, target)


@pytest.fixture(scope="session")
def diabetes_path(tmp_path_factory: pytest.TempPathFactory,
                  diabetes: tuple[np.ndarray, LinearRegression]) -> Path:
    path = tmp_path_factory.mktemp("artifacts") / "diabetes.joblib"
    joblib.dump(diabetes[1], path)
    return path


def build_demo(script: str, output: Path) -> Path:
    """Run ``models/<script>``'s ``build(output)``: the demo artifacts `make serve` builds."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(script.removesuffix(".py"),
                                                  Path(__file__).parent.parent / "models" / script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    built: Path = module.build(output)
    return built


@pytest.fixture(scope="session")
def resnet_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo("build_resnet50.py", tmp_path_factory.mktemp("resnet") / "resnet50.safetensors")


@pytest.fixture(scope="session")
def transformer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo("build_transformer.py", tmp_path_factory.mktemp("transformer"))


def make_client(tmp_path: Path, models: list[dict[str, Any]], **settings: Any) -> TestClient:
    config = write_models(tmp_path / "models.toml", models)
    app = create_app(ServerSettings(config=config, **settings), load_models(config))
    return TestClient(app, raise_server_exceptions=False)


def wait_ready(client: TestClient, timeout_s: float = 60.0) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return
        body = client.get("/readyz").json()
        if all(m["state"] != "loading" for m in body["models"].values()):
            return
        time.sleep(0.02)
    raise TimeoutError("models did not finish loading")


@pytest.fixture
def diabetes_client(tmp_path: Path, diabetes_path: Path) -> Iterator[TestClient]:
    with make_client(tmp_path, [
        {"name": "diabetes", "backend": "sklearn", "path": str(diabetes_path)},
        {"name": "echo", "backend": "echo", "path": "unused", "max_batch_size": 4},
    ]) as client:
        wait_ready(client)
        yield client
