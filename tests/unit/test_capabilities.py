"""The backends' optional capabilities for the planner (backends/capabilities.py), and the
planner asking for them instead of branching on backend names or scanning attributes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from batchserve.backends import backend_class
from batchserve.backends.base import Backend
from batchserve.backends.capabilities import (
    DeviceSupport,
    FittedEstimator,
    SampleItems,
    TorchModules,
    TreeEnsemble,
)
from batchserve.config import ModelConfig
from batchserve_planning.modelsize import model_size


class _Held(Backend[Any, Any]):
    """A backend that holds a torch module without offering it as a capability."""

    def load(self, device: str) -> None:
        import torch

        self.net = torch.nn.Linear(3, 2)

    def warmup(self) -> None:
        pass

    def preprocess(self, item: Any, parameters: Any) -> Any:
        return item

    def predict_batch(self, rows: list[Any]) -> Sequence[Any]:
        return rows

    def describe(self) -> dict[str, Any]:
        return {}


class _Offered(_Held):
    def torch_modules(self) -> list[Any]:
        return [self.net]


def _config(backend: str, path: Path) -> ModelConfig:
    return ModelConfig(name="m", backend=backend, path=path)


@pytest.mark.parametrize(("name", "devices", "capabilities"), [
    ("sklearn", ("cpu",), {SampleItems, FittedEstimator}),
    ("resnet50", ("cpu", "cuda"), {SampleItems, TorchModules}),
    ("transformer", ("cpu", "cuda"), {SampleItems, TorchModules}),
    ("xgboost", ("cpu", "cuda"), {SampleItems, TreeEnsemble}),
    ("lightgbm", ("cpu",), {SampleItems, TreeEnsemble}),
])
def test_the_builtin_backends_offer_their_capabilities(name: str, devices: tuple[str, ...],
                                                       capabilities: set[type]) -> None:
    cls = backend_class(name)
    assert issubclass(cls, DeviceSupport) and cls.supported_devices() == devices
    assert {c for c in (SampleItems, TorchModules, FittedEstimator, TreeEnsemble)
            if issubclass(cls, c)} == capabilities


def test_a_backend_without_them_offers_none() -> None:
    echo = backend_class("echo")  # tests/plugins: written as a plugin author would
    assert not any(issubclass(echo, c) for c in (SampleItems, TorchModules, FittedEstimator, DeviceSupport))


def test_model_size_comes_from_the_capability_not_from_the_attributes(tmp_path: Path) -> None:
    held = _Held(_config("held", tmp_path / "none"))
    held.load("cpu")
    assert model_size(held)["kind"] == "unknown"
    offered = _Offered(_config("offered", tmp_path / "none"))
    offered.load("cpu")
    size = model_size(offered)
    assert size["kind"] == "torch" and size["parameters"] == 3 * 2 + 2


def test_sklearn_samples_are_rows_it_accepts(diabetes_path: Path) -> None:
    backend = backend_class("sklearn")(_config("sklearn", diabetes_path))
    backend.load("cpu")
    assert isinstance(backend, SampleItems) and isinstance(backend, FittedEstimator)
    items, description = backend.sample_items()
    assert description == "a row of 10 zeros"
    outputs = backend.predict_batch([backend.preprocess(item, None) for item in items])
    assert len(outputs) == 1
    assert model_size(backend)["estimator"] == "LinearRegression"
