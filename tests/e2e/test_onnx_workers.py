"""An ONNX graph behind ``--workers 2``: every worker loads its own session and answers alike
over /predict and v2, and the server is ready as one."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.support import running_server, write_models
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
