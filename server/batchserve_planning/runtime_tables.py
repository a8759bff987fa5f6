"""``[[models]]`` tables: a model's as written, and a candidate's under another runtime or
precision (``recommend --runtimes``)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any


def model_table(config: Path, name: str) -> dict[str, Any]:
    """``name``'s ``[[models]]`` table in ``config``, as written."""
    data = tomllib.loads(config.read_text(encoding="utf-8"))
    for table in data.get("models", []):
        if table.get("name") == name:
            return dict(table)
    raise ValueError(f"{config}: no model {name!r}")


def onnx_kind(backend: str) -> str | None:
    """What ``export`` writes for ``backend``'s models (image, classifier, embedding), if anything."""
    from batchserve.onnx_export import KINDS

    return KINDS.get(backend)


def onnx_table(base: dict[str, Any], graph: str) -> dict[str, Any]:
    """``base`` (a torch model's ``[[models]]`` table) served by its ONNX preset from ``graph``."""
    from batchserve.onnx_export import ONNX_BACKENDS, onnx_options

    kind = onnx_kind(base["backend"])
    assert kind is not None
    table = {key: value for key, value in base.items() if key not in ("sha256", "options")}
    options = onnx_options(kind, base.get("options", {}))
    return {**table, "backend": ONNX_BACKENDS[kind], "path": graph,
            **({"options": options} if options else {})}


def torch_options(options: dict[str, Any], dtype: str) -> dict[str, Any]:
    """A torch backend's ``options`` at ``dtype``: int8 is float32 weights quantised as they load."""
    options = {key: value for key, value in options.items() if key not in ("dtype", "quantize")}
    if dtype == "int8":
        options["quantize"] = "int8"
    elif dtype != "float32":
        options["dtype"] = dtype
    return options
