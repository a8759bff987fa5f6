"""The management API: off by default, bearer-token protected, loads by name from the
repository file, tunes a running batcher, and drops no admitted request."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from batchserve.app import create_app
from batchserve.config import load_models
from batchserve.settings import ServerSettings
from fastapi.testclient import TestClient
from pydantic import SecretStr

from tests.support import make_client, wait_ready, write_models

TOKEN = "correct-horse-battery-staple"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MODELS: list[dict[str, Any]] = [
    {"name": "echo", "backend": "echo", "path": "x", "max_batch_size": 8, "max_wait_ms": 20},
    {"name": "slow", "backend": "echo", "path": "x", "options": {"delay_ms": 200}},
]


@pytest.fixture
def managed(tmp_path: Path) -> Iterator[tuple[TestClient, Path]]:
    config = write_models(tmp_path / "models.toml", MODELS)
    app = create_app(ServerSettings(config=config, management_token=SecretStr(TOKEN), shutdown_grace_s=10),
                     load_models(config))
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_ready(client)
        yield client, config


def batch_sizes(client: TestClient) -> tuple[float, float]:
    text = client.get("/metrics").text
    def value(name: str) -> float:
        line = next(x for x in text.splitlines() if x.startswith(f'{name}{{model="echo"}}'))
        return float(line.split()[-1])
    return value("batchserve_batch_size_sum"), value("batchserve_batch_size_count")


def test_off_by_default(diabetes_client: TestClient) -> None:
    response = diabetes_client.post("/v2/repository/models/echo/unload", headers=AUTH)
    assert response.status_code == 403
    assert response.json()["error"]["type"] == "management_disabled"


def test_token_is_required(managed: tuple[TestClient, Path]) -> None:
    client, _ = managed
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        response = client.post("/v2/repository/index", headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
    assert client.post("/v2/repository/index", headers=AUTH).status_code == 200


def test_short_token_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="at least 16"):
        ServerSettings(management_token=SecretStr("short"))


def test_change_batcher_settings_live(managed: tuple[TestClient, Path]) -> None:
    client, _ = managed
    response = client.patch("/models/echo/config", headers=AUTH,
                            json={"max_batch_size": 2, "timeout_ms": 5000})
    assert response.status_code == 200, response.text
    assert response.json()["config"]["max_batch_size"] == 2
    before = batch_sizes(client)
    assert client.post("/predict", json={"model": "echo", "inputs": [1, 2, 3, 4, 5]}).status_code == 200
    rows, batches = (a - b for a, b in zip(batch_sizes(client), before, strict=True))
    assert (rows, batches) == (5, 3)  # 2 + 2 + 1
    assert client.get("/models/echo").json()["config"]["timeout_ms"] == 5000
    for bad in ({"max_batch_size": 0}, {"colour": 1}, {"max_wait_ms": "soon"}):
        assert client.patch("/models/echo/config", headers=AUTH, json=bad).status_code == 422


def test_unload_then_load_again(managed: tuple[TestClient, Path]) -> None:
    client, _ = managed
    response = client.post("/v2/repository/models/echo/unload", headers=AUTH)
    assert response.status_code == 200 and response.json()["state"] == "UNLOADED"
    refused = client.post("/predict", json={"model": "echo", "inputs": [1]})
    assert refused.status_code == 503
    assert client.get("/readyz").status_code == 200  # unloaded on purpose: still ready
    index = {m["name"]: m["state"] for m in client.post("/v2/repository/index", headers=AUTH).json()}
    assert index == {"echo": "UNLOADED", "slow": "READY"}
    assert client.post("/v2/repository/models/echo/load", headers=AUTH).json()["state"] == "READY"
    assert client.post("/predict", json={"model": "echo", "inputs": [1]}).json()["outputs"] == [2.0]


def test_load_reads_the_repository_file_and_only_names_in_it(managed: tuple[TestClient, Path]) -> None:
    client, config = managed
    write_models(config, [*MODELS, {"name": "new", "backend": "echo", "path": "x"}])
    assert client.post("/v2/repository/models/new/load", headers=AUTH).status_code == 200
    assert client.post("/predict", json={"model": "new", "inputs": [2]}).json()["outputs"] == [4.0]
    missing = client.post("/v2/repository/models/elsewhere/load", headers=AUTH)
    assert missing.status_code == 404
    url = client.post("/v2/repository/models/http:%2F%2Fevil.example%2Fm.joblib/load", headers=AUTH)
    assert url.status_code == 404


def test_failed_reload_keeps_the_old_model_serving(managed: tuple[TestClient, Path]) -> None:
    client, config = managed
    broken = [{**MODELS[0], "options": {"fail_load": True}}, MODELS[1]]
    write_models(config, broken)
    response = client.post("/v2/repository/models/echo/load", headers=AUTH)
    assert response.status_code == 409
    assert "told to fail" in response.json()["error"]["message"]
    assert client.post("/predict", json={"model": "echo", "inputs": [1]}).status_code == 200


def test_reload_and_reconfigure_drop_no_admitted_request(managed: tuple[TestClient, Path]) -> None:
    client, _ = managed
    results: list[int] = []

    def ask(value: int) -> None:
        response = client.post("/predict", json={"model": "slow", "inputs": [value]})
        results.append(response.status_code)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    reload = client.post("/v2/repository/models/slow/load", headers=AUTH)
    patch = client.patch("/models/slow/config", headers=AUTH, json={"max_batch_size": 1})
    for thread in threads:
        thread.join(30)
    assert reload.status_code == 200 and patch.status_code == 200
    assert results == [200] * 6


def test_disabled_in_plain_settings(tmp_path: Path) -> None:
    with make_client(tmp_path, MODELS[:1]) as client:
        wait_ready(client)
        assert client.patch("/models/echo/config", headers=AUTH, json={}).status_code == 403
