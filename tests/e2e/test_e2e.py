"""End to end: a real `batchserve serve` process on a free loopback port."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from sklearn.linear_model import LinearRegression

from tests.support import ServerProcess, running_server, write_models

pytestmark = pytest.mark.slow


def metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    match = re.search(rf"^{re.escape(name)}\{{{re.escape(wanted)}\}} (\S+)$", text, re.MULTILINE)
    assert match, f"{name}{{{wanted}}} not in /metrics"
    return float(match.group(1))


def test_concurrent_requests_are_batched_and_answered_exactly(
        tmp_path: Path, diabetes_path: Path, diabetes: tuple[np.ndarray, LinearRegression]) -> None:
    features, estimator = diabetes
    expected = estimator.predict(features)
    config = write_models(tmp_path / "models.toml", [{
        "name": "diabetes", "backend": "sklearn", "path": str(diabetes_path),
        "max_batch_size": 64, "max_wait_ms": 20,
    }])
    with running_server(config) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        def ask(index: int) -> tuple[int, float]:
            response = client.post("/predict", json={"model": "diabetes",
                                                     "inputs": [features[index].tolist()]})
            assert response.status_code == 200, response.text
            return index, response.json()["outputs"][0]

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(ask, range(len(features))))
        assert len(answers) == len(features)
        for index, output in answers:
            assert output == pytest.approx(expected[index], rel=1e-12)
        text = client.get("/metrics").text
        requests = metric(text, "batchserve_requests_total", model="diabetes", code="200")
        batches = metric(text, "batchserve_batch_size_count", model="diabetes")
        rows = metric(text, "batchserve_batch_size_sum", model="diabetes")
        assert requests == rows == len(features)
        assert batches < requests  # rows of different requests shared batches


def test_sigterm_drains_in_flight_requests_and_exits_0(tmp_path: Path) -> None:
    go = tmp_path / "go"
    config = write_models(tmp_path / "models.toml", [{
        "name": "slow", "backend": "echo", "path": "x", "max_batch_size": 2,
        "options": {"hold_until": str(go)},  # every batch waits for the file go
    }])
    server = ServerProcess(config, grace_s=20)
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=30) as client, ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(client.post, "/predict", json={"model": "slow", "inputs": [i]})
                       for i in range(8)]
            # SIGTERM once every row is admitted, one batch running (held) and the rest queued
            give_up = time.monotonic() + 30
            while True:
                text = client.get("/metrics").text
                running = metric(text, "batchserve_batch_size_sum", model="slow")
                queued = metric(text, "batchserve_queue_rows", model="slow")
                if running >= 1 and running + queued == 8:
                    break
                assert time.monotonic() < give_up, (running, queued)
                time.sleep(0.02)
            server.terminate()
            # let the batches go only once the server waits for the requests in flight (or, with
            # no grace, has cancelled them): then the answers show the drain, not a race with it
            while not re.search("draining: the listeners are closed|cancelling .* still running",
                                server.output()):
                assert time.monotonic() < give_up, server.output()
                time.sleep(0.02)
            with pytest.raises(httpx.ConnectError):  # and new connections are refused
                httpx.get(f"{server.url}/healthz", timeout=5)
            go.touch()
            answers = [f.result() for f in futures]
        assert [a.status_code for a in answers] == [200] * 8
        assert [a.json()["outputs"] for a in answers] == [[2.0 * i] for i in range(8)]
        assert server.process.wait(timeout=20) == 0
        assert "shutdown complete" in server.output()
    finally:
        go.touch()
        server.close()


def test_bad_config_exits_2_naming_the_problem(tmp_path: Path) -> None:
    config = write_models(tmp_path / "models.toml", [
        {"name": "m", "backend": "sklearn", "path": "x", "max_batch_size": -1}])
    result = subprocess.run(
        [sys.executable, "-m", "batchserve", "serve", "--config", str(config), "--port", "0"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "model 'm': field 'max_batch_size'" in result.stderr


def test_strict_readiness_false_flag_serves_ready_beside_a_failed_model(tmp_path: Path) -> None:
    config = write_models(tmp_path / "models.toml", [
        {"name": "echo", "backend": "echo", "path": "x"},
        {"name": "broken", "backend": "echo", "path": "x", "options": {"fail_load": True}}])
    # running_server waits for /readyz to answer 200: with strict readiness it never would
    with running_server(config, args=["--strict-readiness=false"]) as server:
        ready = httpx.get(f"{server.url}/readyz", timeout=10)
        assert ready.status_code == 200 and ready.json()["models"]["broken"]["state"] == "failed"
        assert httpx.post(f"{server.url}/predict/echo", json={"inputs": [1]}, timeout=10).status_code == 200


def test_a_failed_models_503_names_its_artifact_relative_to_the_repository(tmp_path: Path) -> None:
    """The 503 an unauthenticated client gets for a model that failed to load says why, with the
    artifact's path as `/models` shows it (relative to the repository), not the server's own."""
    root = tmp_path / "repo"
    (root / "artifacts").mkdir(parents=True)
    (root / "artifacts" / "bad.joblib").write_text("not a pickle")
    config = write_models(root / "models.toml", [
        {"name": "echo", "backend": "echo", "path": "x"},
        {"name": "bad", "backend": "sklearn", "path": "artifacts/bad.joblib"}], root=root)
    with running_server(config, args=["--strict-readiness=false"]) as server:
        answer = httpx.post(f"{server.url}/predict/bad", json={"inputs": [[1.0] * 10]}, timeout=10)
        assert answer.status_code == 503
        message = answer.json()["error"]["message"]
        assert "artifacts/bad.joblib" in message and str(root) not in message, message
