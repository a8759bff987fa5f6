"""An ONNX graph behind ``--workers 2`` (every worker loads its own session and answers alike
over /predict and v2, the server ready as one), and `inspect` measuring a graph's memory."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.support import inspect_json, running_server, write_models
from tests.support.graphs import WEIGHTS, linear

pytestmark = pytest.mark.slow


def test_two_workers_serve_one_graph_on_one_port(tmp_path: Path) -> None:
    config = write_models(tmp_path / "models.toml", [
        {"name": "linear", "backend": "onnx", "path": str(linear(tmp_path / "linear.onnx")),
         "max_batch_size": 8, "max_wait_ms": 1}])
    with running_server(config, args=["--workers", "2"]) as server, \
            httpx.Client(base_url=server.url, timeout=30) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200 and list(ready.json()["workers"].values()) == ["ready"]
        for value in range(20):
            row = [value, 1.0, -value]
            answer = client.post("/predict/linear", json={"inputs": [row]})
            assert answer.json()["outputs"] == (np.array([row], dtype=np.float32) @ WEIGHTS).tolist()
            infer = client.post("/v2/models/linear/infer", json={"inputs": [
                {"name": "x", "datatype": "FP32", "shape": [1, 3], "data": row}]})
            assert infer.json()["outputs"][0]["data"] == answer.json()["outputs"][0]


def test_inspect_measures_an_onnx_models_memory_per_batch(tmp_path: Path) -> None:
    """``inspect`` on a graph: the process once loaded, and each batch's peak growth, measured
    as for any backend without torch modules (its resident set)."""
    config = write_models(tmp_path / "models.toml", [
        {"name": "linear", "backend": "onnx", "path": str(linear(tmp_path / "linear.onnx"))}])
    (tmp_path / "rows.json").write_text("[[1, 2, 3]]")
    report = inspect_json("linear", "--config", str(config), "--inputs", str(tmp_path / "rows.json"),
                          "--batch-sizes", "1,4")
    assert report["backend"] == "onnx" and report["loaded"]["bytes"] > 0
    assert [row["batch_size"] for row in report["memory"]] == [1, 4]
    assert report["per_worker"]["bytes"] >= report["loaded"]["bytes"]
