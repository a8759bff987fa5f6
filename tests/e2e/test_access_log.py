"""The access log against a real server: off by default; with ``--access-log``, one line per
request (inference through the fast path, and every other route) with its method, path, model,
status, duration and the request id the client sent (``X-Request-Id``)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest

from tests.support import ServerProcess, running_server, write_models

pytestmark = pytest.mark.slow

ROW = [0.0] * 10
LINE = re.compile(r"batchserve\.access: (\S+) (\S+) (\d{3}) (\d+\.\d{2}) ms model=(\S+) request_id=(\S+)$")


def access_lines(server: ServerProcess, count: int) -> list[tuple[str, ...]]:
    """The server's access-log lines, once there are ``count`` (a line is written after its answer)."""
    deadline = time.monotonic() + 10
    while True:
        found = [line for line in server.output().splitlines() if "batchserve.access" in line]
        if len(found) >= count or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    parsed = []
    for line in found:
        match = LINE.search(line)
        assert match, line
        parsed.append(match.groups())
    return parsed


def models(tmp_path: Path, diabetes_path: Path) -> Path:
    return write_models(tmp_path / "models.toml", [
        {"name": "diabetes", "backend": "sklearn", "path": str(diabetes_path)},
        {"name": "echo", "backend": "echo", "path": "x"}])


def test_the_access_log_is_off_by_default(tmp_path: Path, diabetes_path: Path) -> None:
    with running_server(models(tmp_path, diabetes_path)) as server:
        assert httpx.post(f"{server.url}/predict/diabetes", json={"inputs": [ROW]}).status_code == 200
        assert httpx.get(f"{server.url}/models/echo").status_code == 200
        time.sleep(0.2)
        assert "batchserve.access" not in server.output()


def test_one_access_line_per_request(tmp_path: Path, diabetes_path: Path) -> None:
    with running_server(models(tmp_path, diabetes_path), args=["--access-log"]) as server, \
            httpx.Client(base_url=server.url, timeout=30) as client:
        before = len(access_lines(server, 0))  # the readiness polls of the launcher
        sent = [
            client.post("/predict/diabetes", json={"inputs": [ROW]}, headers={"x-request-id": "r-1"}),
            client.post("/predict", json={"model": "echo", "inputs": [1, 2]}),  # the body names it
            client.post("/v2/models/diabetes/infer", headers={"X-Request-Id": "r 3\tx"}, json={
                "inputs": [{"name": "x", "shape": [1, 10], "datatype": "FP64", "data": ROW}]}),
            client.get("/models/echo", headers={"x-request-id": "r-4"}),
            client.post("/predict/nope", json={"inputs": [1]}),
            client.get("/nope"),
        ]
        assert [r.status_code for r in sent] == [200, 200, 400, 200, 404, 404]
        lines = access_lines(server, before + len(sent))[before:]
        shown = [(method, path, int(status), model, request_id)
                 for method, path, status, _, model, request_id in lines]
        assert shown == [
            ("POST", "/predict/diabetes", 200, "diabetes", "r-1"),
            ("POST", "/predict", 200, "echo", "-"),
            ("POST", "/v2/models/diabetes/infer", 400, "diabetes", "r%203%09x"),  # escaped: one field
            ("GET", "/models/echo", 200, "echo", "r-4"),
            ("POST", "/predict/nope", 404, "nope", "-"),
            ("GET", "/nope", 404, "-", "-"),
        ]
        assert all(0 <= float(duration) < 30_000 for _, _, _, duration, _, _ in lines)
