"""``batchserve loadtest --protocol grpc``: the planner loads a model over its gRPC port, the way
tritonclient.grpc calls it, and reads the same report (statuses as REST's)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from batchserve.cli import main

from tests.support import free_port, running_server, write_models

pytestmark = pytest.mark.slow


def _loadtest(tmp_path: Path, url: str, port: int, model: str, inputs: Path, *args: str) -> dict[str, Any]:
    out = tmp_path / f"report-{model}"
    assert main(["loadtest", "--url", url, "--protocol", "grpc", "--grpc-port", str(port), "--model", model,
                 "--inputs", str(inputs), "--out", str(out), "--no-progress", "--warmup-s", "0.2",
                 *args]) == 0
    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    return report


def test_loadtest_over_grpc_counts_every_request_and_its_errors(tmp_path: Path, diabetes_path: Path) -> None:
    config = write_models(tmp_path / "models.toml", [
        {"name": "diabetes", "backend": "sklearn", "path": str(diabetes_path), "max_batch_size": 8}])
    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(json.dumps([0.01 * i] * 10) for i in range(5)) + "\n")
    mixed = tmp_path / "mixed.jsonl"  # every other row is short
    mixed.write_text(json.dumps([0.0] * 10) + "\n" + json.dumps([0.0] * 3) + "\n")
    port = free_port()
    with running_server(config, args=["--grpc-port", str(port)]) as server:
        report = _loadtest(tmp_path, server.url, port, "diabetes", rows, "--concurrency", "4",
                           "--requests", "200", "--rows-per-request", "2")
        result = report["result"]
        assert report["settings"]["protocol"] == "grpc"
        assert result["requests"] == 200 and result["status_counts"] == {"200": 200}
        assert result["rows_per_s"] == pytest.approx(2 * result["throughput_rps"])
        assert 1 <= result["mean_batch_size"] <= 8  # the server's own counters: the rows did arrive
        (tmp_path / "report-diabetes").rename(tmp_path / "first")
        short = _loadtest(tmp_path, server.url, port, "diabetes", mixed, "--concurrency", "1",
                          "--requests", "20")["result"]
        assert short["status_counts"] == {"200": 10, "400": 10}  # INVALID_ARGUMENT, as REST's 400
        assert "expected 10 features, got 3" in short["error_examples"]["400"]
