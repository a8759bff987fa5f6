"""/metrics of a server of several processes: real ``batchserve serve`` processes sharing one
prometheus-client multiprocess directory (as the supervisor's workers do), each on its own port
here, so the test picks which process each request goes to and which one is scraped."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from batchserve.metrics_multiprocess import retire_worker
from sklearn.linear_model import LinearRegression

from tests.support import ServerProcess, running_server, write_models

pytestmark = pytest.mark.slow

SPREAD = (7, 5, 3)
"""Requests sent to each process: K = 15 in all."""


@contextlib.contextmanager
def processes(config: Path, metrics_dir: Path, count: int) -> Iterator[list[ServerProcess]]:
    env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "BATCHSERVE_WORKERS": "1"}
    started = [ServerProcess(config, env=env) for _ in range(count)]  # they start side by side
    try:
        for server in started:
            server.wait_ready()
        yield started
    finally:
        for server in started:
            server.close()


def samples(url: str, *, per_worker: bool = False) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = httpx.get(f"{url}/metrics", params={"per_worker": "true"} if per_worker else {}, timeout=30)
    assert response.status_code == 200, response.text
    found = {}
    for line in response.text.splitlines():
        if line and not line.startswith("#"):
            series, _, number = line.rpartition(" ")
            name, _, labels = series.partition("{")
            found[name, frozenset(re.findall(r'(\w+)="([^"]*)"', labels))] = float(number)
    return found


def requests_by_pid(scraped: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> dict[str, float]:
    return {dict(labels).get("pid", dict(labels).get("worker", "?")): count
            for (name, labels), count in scraped.items()
            if name == "batchserve_requests_total" and ("code", "200") in labels}


def test_metrics_after_k_requests_spread_over_the_processes_show_k_and_keep_them_when_one_dies(
        tmp_path: Path, diabetes_path: Path, diabetes: tuple[np.ndarray, LinearRegression]) -> None:
    features, _ = diabetes
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    config = write_models(tmp_path / "models.toml", [
        {"name": "diabetes", "backend": "sklearn", "path": str(diabetes_path)}])
    k = sum(SPREAD)
    with processes(config, metrics_dir, len(SPREAD)) as servers:
        for server, count in zip(servers, SPREAD, strict=True):
            with httpx.Client(base_url=server.url, timeout=30) as client:
                for index in range(count):
                    response = client.post("/predict", json={"model": "diabetes",
                                                             "inputs": [features[index].tolist()]})
                    assert response.status_code == 200, response.text

        diabetes_labels = frozenset({("model", "diabetes")})
        for server in servers:  # whichever process answers, the server's totals
            merged = samples(server.url)
            assert merged["batchserve_requests_total", diabetes_labels | {("code", "200")}] == k
            assert merged["batchserve_request_duration_seconds_count", diabetes_labels] == k
            assert merged["batchserve_batch_size_sum", diabetes_labels] == k  # one row each
            assert merged["batchserve_model_ready", diabetes_labels] == 1  # the minimum: ready in all
            assert merged["batchserve_queue_rows", diabetes_labels] == 0
            # v2's statistics (Triton's extension) read the same totals
            stats = httpx.get(f"{server.url}/v2/models/diabetes/stats", timeout=30).json()["model_stats"][0]
            assert stats["inference_stats"]["success"]["count"] == k and stats["inference_count"] == k
            assert stats["inference_stats"]["queue"]["count"] == k
        pids = [str(server.process.pid) for server in servers]
        by_pid = requests_by_pid(samples(servers[0].url, per_worker=True))
        assert by_pid == dict(zip(pids, SPREAD, strict=True))

        dead = servers[2]
        dead.close()  # SIGKILL
        retire_worker(metrics_dir, dead.process.pid)
        merged = samples(servers[1].url)
        assert merged["batchserve_requests_total", diabetes_labels | {("code", "200")}] == k
        assert merged["batchserve_batch_size_sum", diabetes_labels] == k
        per_worker = samples(servers[0].url, per_worker=True)
        assert requests_by_pid(per_worker) == {pids[0]: SPREAD[0], pids[1]: SPREAD[1], "retired": SPREAD[2]}
        # Its live gauges left with it: the queue and readiness of the two that run.
        assert {dict(labels).get("pid") for name, labels in per_worker
                if name in ("batchserve_queue_rows", "batchserve_model_ready")} == {pids[0], pids[1]}


def test_one_process_metrics_are_as_before_whatever_per_worker_says(
        tmp_path: Path, diabetes_path: Path, diabetes: tuple[np.ndarray, LinearRegression]) -> None:
    config = write_models(tmp_path / "models.toml", [
        {"name": "diabetes", "backend": "sklearn", "path": str(diabetes_path)}])
    with running_server(config) as server:  # no PROMETHEUS_MULTIPROC_DIR: its own registry
        response = httpx.post(f"{server.url}/predict", json={"model": "diabetes",
                                                             "inputs": [diabetes[0][0].tolist()]}, timeout=30)
        assert response.status_code == 200, response.text
        plain, labelled = samples(server.url), samples(server.url, per_worker=True)
        assert plain == labelled
        assert plain["batchserve_requests_total", frozenset({("model", "diabetes"), ("code", "200")})] == 1
        assert not [labels for _, labels in plain if {"pid", "worker"} & {k for k, _ in labels}]
        refused = httpx.get(f"{server.url}/metrics", params={"per_worker": "maybe"}, timeout=30)
        assert refused.status_code == 422 and "per_worker" in refused.text
