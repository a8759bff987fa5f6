"""Fixtures for every test: the demo models built into the session's temporary folder."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import joblib
import numpy as np
import pytest
from fastapi.testclient import TestClient
from sklearn.datasets import load_diabetes
from sklearn.linear_model import LinearRegression

from tests.support import PLUGINS, build_demo, make_client, wait_ready


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


@pytest.fixture(scope="session")
def resnet_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo("build_resnet50.py", tmp_path_factory.mktemp("resnet") / "resnet50.safetensors")


@pytest.fixture(scope="session")
def transformer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo("build_transformer.py", tmp_path_factory.mktemp("transformer"))


@pytest.fixture(scope="session")
def minilm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """all-MiniLM-L6-v2 copied out of its package, as `make serve` builds it."""
    return build_demo("build_minilm.py", tmp_path_factory.mktemp("minilm") / "minilm")


@pytest.fixture
def diabetes_client(tmp_path: Path, diabetes_path: Path) -> Iterator[TestClient]:
    with make_client(tmp_path, [
        {"name": "diabetes", "backend": "sklearn", "path": str(diabetes_path)},
        {"name": "echo", "backend": "echo", "path": "unused", "max_batch_size": 4},
    ]) as client:
        wait_ready(client)
        yield client
