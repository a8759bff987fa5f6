"""The management API on its own port (``--management-port``), against a real server: served
there only, over the same models as the main port, and both ports drain on SIGTERM (exit 0)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from batchserve.settings import ServerSettings

from tests.support import ServerProcess, free_port, write_models

pytestmark = pytest.mark.slow

TOKEN = "correct-horse-battery-staple"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_management_routes_are_served_on_their_own_port_only(tmp_path: Path) -> None:
    config = write_models(tmp_path / "models.toml", [
        {"name": "echo", "backend": "echo", "path": "x", "max_batch_size": 8}])
    management_port = free_port()
    server = ServerProcess(config, args=["--management-port", str(management_port)],
                           env={"BATCHSERVE_MANAGEMENT_TOKEN": TOKEN})
    try:
        server.wait_ready()
        management = f"http://127.0.0.1:{management_port}"
        with httpx.Client(timeout=30) as client:
            # The main port has no management routes at all: 404, whatever the token.
            assert client.post(f"{server.url}/v2/repository/index", headers=AUTH).status_code == 404
            assert client.patch(f"{server.url}/models/echo/config", headers=AUTH,
                                json={"max_batch_size": 2}).status_code == 404
            assert client.post(f"{server.url}/v2/repository/models/echo/unload",
                               headers=AUTH).status_code == 404
            # The management port has them, token-protected, and only them.
            assert client.post(f"{management}/v2/repository/index").status_code == 401
            index = client.post(f"{management}/v2/repository/index", headers=AUTH)
            assert index.status_code == 200 and [m["name"] for m in index.json()] == ["echo"]
            for path in ("/predict/echo", "/healthz", "/docs", "/openapi.json"):
                assert client.request("POST" if "predict" in path else "GET", f"{management}{path}",
                                      json={"inputs": [1]}).status_code == 404, path
            # One state behind both: a change on the management port is what the main port serves.
            changed = client.patch(f"{management}/models/echo/config", headers=AUTH,
                                   json={"max_batch_size": 2})
            assert changed.status_code == 200
            assert client.get(f"{server.url}/models/echo").json()["config"]["max_batch_size"] == 2
            predicted = client.post(f"{server.url}/predict/echo", json={"inputs": [1, 2, 3]})
            assert predicted.json()["outputs"] == [2.0, 4.0, 6.0]
            # The OpenAPI document of the main port does not advertise what it does not serve.
            assert "/v2/repository/index" not in client.get(f"{server.url}/openapi.json").json()["paths"]
        server.terminate()
        assert server.process.wait(timeout=60) == 0, server.output()
        with pytest.raises(httpx.ConnectError):
            httpx.post(f"{management}/v2/repository/index", headers=AUTH, timeout=5)
    finally:
        server.close()


def test_the_management_port_must_differ_from_the_main_port() -> None:
    with pytest.raises(ValueError, match="management_port must differ"):
        ServerSettings(port=8000, management_port=8000)
