"""KServe's Python gRPC client (``InferenceGRPCClient``, in the KServe virtualenv the v2 REST
tests use) against a real server's gRPC port: health, typed and raw tensors, answers equal to
REST's, and a bad item as INVALID_ARGUMENT naming it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.support import ROOT, free_port, running_server, write_models

ROW = [0.038, 0.051, 0.062, 0.022, -0.044, -0.035, -0.043, -0.003, 0.020, -0.018]


def test_kserves_grpc_client(tmp_path: Path, diabetes_path: Path) -> None:
    python = ROOT / ".venv-kserve" / "bin" / "python"
    if not python.exists():
        pytest.skip("KServe's client lives in .venv-kserve, which `make test` creates")
    config = write_models(tmp_path / "models.toml",
                          [{"name": "diabetes", "backend": "sklearn", "path": str(diabetes_path)}])
    port = free_port()
    with running_server(config, args=["--grpc-port", str(port)]) as server:
        result = subprocess.run([str(python), str(ROOT / "tests" / "clients" / "kserve_grpc_client.py"),
                                 f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-3000:]
        seen = json.loads(result.stdout)
        rest = httpx.post(f"{server.url}/v2/models/diabetes/infer", timeout=30, json={"inputs": [
            {"name": "input", "datatype": "FP64", "shape": [2, 10], "data": [ROW, [0.0] * 10]}]}).json()
    assert (seen["live"], seen["ready"], seen["model_ready"]) == (True, True, True)
    expected = rest["outputs"][0]["data"]
    for binary in (False, True):
        answer = seen[f"diabetes_binary_{binary}"]
        assert answer["id"] == f"r-{binary}"
        assert answer["outputs"]["output"] == expected
    assert seen["error"]["code"] == "INVALID_ARGUMENT"
    assert "item 0: expected 10 features, got 3" in seen["error"]["details"]
