"""Backends by short name; third-party ones register in the ``batchserve.backends`` group.

A plugin writes ``from batchserve.backends import Backend, LoadError`` (the contract is
in ``base``; the planner's optional capabilities in ``capabilities``; the kinds of model the
protocol adapters serve, v2's tensors and ``/v1/embeddings``, in ``kinds``).

Resolving a name imports only the backend's module, never its framework:
torch and friends are imported inside ``load``.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any

from batchserve.backends.base import Backend, LoadError

__all__ = ["BUILTIN", "ENTRY_POINT_GROUP", "Backend", "LoadError", "backend_class"]

ENTRY_POINT_GROUP = "batchserve.backends"

BUILTIN: dict[str, str] = {
    "sklearn": "batchserve.backends.sklearn:SklearnBackend",
    "resnet50": "batchserve.backends.resnet50:ResNet50Backend",
    "transformer": "batchserve.backends.transformer:TransformerBackend",
    "embedding": "batchserve.backends.embedding:EmbeddingBackend",
    "xgboost": "batchserve.backends.xgboost:XGBoostBackend",
    "lightgbm": "batchserve.backends.lightgbm:LightGBMBackend",
    "onnx": "batchserve.backends.onnx:OnnxBackend",
    "onnx-image": "batchserve.backends.onnx_image:OnnxImageBackend",
    "onnx-classifier": "batchserve.backends.onnx_text:OnnxClassifierBackend",
    "onnx-embedding": "batchserve.backends.onnx_text:OnnxEmbeddingBackend",
}


def backend_class(name: str) -> type[Backend[Any, Any]]:
    """The backend class called ``name``: built in, or from an installed entry point."""
    target = BUILTIN.get(name)
    if target is None:
        found = entry_points(group=ENTRY_POINT_GROUP, name=name)
        if not found:
            installed = sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
            raise LookupError(
                f"unknown backend {name!r}; built in: {sorted(BUILTIN)}; "
                f"installed through the '{ENTRY_POINT_GROUP}' entry point group: {installed}"
            )
        target = next(iter(found)).value
    module_name, _, attribute = target.partition(":")
    cls = getattr(importlib.import_module(module_name), attribute)
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise LookupError(f"backend {name!r} ({target}) is not a subclass of {Backend.__module__}.Backend")
    return cls
