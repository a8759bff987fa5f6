"""The management API: off by default, bearer-token protected, loads by name from the
repository file, tunes a running batcher, and drops no admitted request."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import joblib
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
    assert response.json() == {"error": "the management API is off; set BATCHSERVE_MANAGEMENT_TOKEN "
                                        "to use it"}  # v2's shape, as every /v2 route's


ROUTES = [("POST", "/v2/repository/index"), ("POST", "/v2/repository/models/{name}/load"),
          ("POST", "/v2/repository/models/{name}/unload"), ("PATCH", "/models/{name}/config")]
"""Every route of the management API (checked against the app's, below)."""


VERSION_ROUTES = [("GET", "/v2/repository/models/{name}/routing"),
                  ("PUT", "/v2/repository/models/{name}/routing"),
                  ("POST", "/v2/repository/models/{name}/versions/{version}/promote"),
                  ("POST", "/v2/repository/models/{name}/rollback"),
                  ("GET", "/v2/repository/models/{name}/shadow")]
"""The routes of a model's versions' traffic (docs/versions.md), checked on a model with versions."""


def test_the_management_routes_are_the_ones_tested(managed: tuple[TestClient, Path]) -> None:
    client, _ = managed
    found = {(method, route.path) for route in client.app.routes  # type: ignore[attr-defined]
             if "management" in getattr(route, "tags", ()) for method in route.methods}
    assert found == set(ROUTES) | set(VERSION_ROUTES)


@pytest.mark.parametrize(("method", "path"), VERSION_ROUTES)
def test_every_routing_route_needs_the_token(tmp_path: Path, method: str, path: str) -> None:
    config = write_models(tmp_path / "models.toml", [{
        "name": "echo", "backend": "echo", "path": "x",
        "versions": [{"version": "1", "weight": 0.5}, {"version": "2", "weight": 0.5}]}])
    app = create_app(ServerSettings(config=config, management_token=SecretStr(TOKEN)), load_models(config))
    url = path.format(name="echo", version="2")
    body = {"weights": {"1": 1.0, "2": 0.0}}
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_ready(client)
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
            response = client.request(method, url, headers=headers, json=body)
            assert response.status_code == 401, (method, url, headers, response.text)
        routing = client.get("/v2/repository/models/echo/routing", headers=AUTH).json()
        assert routing["weights"] == {"1": 0.5, "2": 0.5}  # nothing changed
        if path.endswith("/rollback"):  # something to roll back first
            assert client.put(url.replace("rollback", "routing"), headers=AUTH, json=body).status_code == 200
        assert client.request(method, url, headers=AUTH, json=body).status_code == 200
    off = make_client(tmp_path, [{"name": "echo", "backend": "echo", "path": "x",
                                  "versions": [{"version": "1"}, {"version": "2"}]}])
    with off:
        assert off.request(method, url, headers=AUTH, json=body).status_code == 403


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_route_needs_the_token(managed: tuple[TestClient, Path], method: str, path: str) -> None:
    client, _ = managed
    url = path.format(name="echo")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                    {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": "Bearer"}):
        response = client.request(method, url, headers=headers, json={"max_batch_size": 1})
        assert response.status_code == 401, (method, url, headers, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
    echo = client.get("/models/echo").json()
    assert echo["state"] == "ready" and echo["config"]["max_batch_size"] == 8  # nothing changed
    assert client.request(method, url, headers=AUTH, json={"max_batch_size": 1}).status_code == 200


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_route_is_off_without_a_token(diabetes_client: TestClient, method: str, path: str) -> None:
    response = diabetes_client.request(method, path.format(name="echo"), headers=AUTH, json={})
    assert response.status_code == 403, (method, path, response.text)
    error = response.json()["error"]
    if path.startswith("/v2/"):  # v2's shape there, batchserve's elsewhere
        assert "management API is off" in error
    else:
        assert error["type"] == "management_disabled"
    assert diabetes_client.get("/models/echo").json()["state"] == "ready"


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
    # and a new timeout_ms is the deadline of the next request: 50 ms, on a batch of 200 ms
    assert client.patch("/models/slow/config", headers=AUTH, json={"timeout_ms": 50}).status_code == 200
    late = client.post("/predict", json={"model": "slow", "inputs": [1]})
    assert late.status_code == 504, late.text
    assert client.patch("/models/slow/config", headers=AUTH, json={"timeout_ms": 5000}).status_code == 200
    assert client.post("/predict", json={"model": "slow", "inputs": [1]}).json()["outputs"] == [2.0]
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
    assert "told to fail" in response.json()["error"]
    assert client.post("/predict", json={"model": "echo", "inputs": [1]}).status_code == 200


def test_a_truncated_artifact_on_reload_names_its_cause(tmp_path: Path, diabetes_path: Path) -> None:
    artifact = tmp_path / "diabetes.joblib"
    artifact.write_bytes(diabetes_path.read_bytes())
    config = write_models(tmp_path / "models.toml", [
        {"name": "diabetes", "backend": "sklearn", "path": str(artifact)}])
    app = create_app(ServerSettings(config=config, management_token=SecretStr(TOKEN)), load_models(config))
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_ready(client)
        artifact.write_bytes(artifact.read_bytes()[:-1])  # a copy cut short by its last byte
        with pytest.raises(EOFError, match=r"^$"):  # joblib's error says nothing: no message
            joblib.load(artifact)
        response = client.post("/v2/repository/models/diabetes/load", headers=AUTH)
        assert response.status_code == 409, response.text
        message = response.json()["error"]
        assert f"cannot load {artifact} with joblib: EOFError; the previous version, " \
               "if any, still serves" in message, message
        assert client.post("/predict/diabetes", json={"inputs": [[0] * 10]}).status_code == 200


def test_reload_and_reconfigure_drop_no_admitted_request(tmp_path: Path) -> None:
    # The row 1 runs (held) on the old version, 2-6 wait in its queue, when the reload comes:
    # the old version must finish them (its drain grace), not fail them over to the new one,
    # which would answer 200 too, having computed the running row a second time.
    go, record = tmp_path / "go", tmp_path / "computed.txt"
    config = write_models(tmp_path / "models.toml", [
        {"name": "reloaded", "backend": "echo", "path": "x", "max_batch_size": 2,
         "options": {"holds": {"1": str(go)}, "record": str(record)}}])
    app = create_app(ServerSettings(config=config, management_token=SecretStr(TOKEN), shutdown_grace_s=10),
                     load_models(config))
    with TestClient(app, raise_server_exceptions=False) as client, ThreadPoolExecutor(8) as pool:
        wait_ready(client)

        def ask(value: int) -> tuple[int, Any]:
            response = client.post("/predict", json={"model": "reloaded", "inputs": [value]})
            return response.status_code, response.json().get("outputs")

        def until(condition: Any) -> None:
            give_up = time.monotonic() + 20
            while not condition():
                assert time.monotonic() < give_up
                time.sleep(0.01)

        def batches() -> float:
            return batch_count(client, "reloaded")

        answers = [pool.submit(ask, 1)]
        until(lambda: batches() == 1)
        answers += [pool.submit(ask, value) for value in range(2, 7)]
        until(lambda: client.get("/models/reloaded").json()["queued_rows"] == 5)
        reload = pool.submit(client.post, "/v2/repository/models/reloaded/load", headers=AUTH)
        # the new version serves the name (the old one's rows are still queued, and held)
        until(lambda: client.get("/models/reloaded").json()["queued_rows"] == 0)
        patch = client.patch("/models/reloaded/config", headers=AUTH, json={"max_batch_size": 1})
        go.touch()
        assert reload.result(30).status_code == 200 and patch.status_code == 200
        assert [answer.result(30) for answer in answers] == [(200, [2.0 * v]) for v in range(1, 7)]
    computed = Counter(float(line) for line in record.read_text().split())
    assert computed == Counter(float(v) for v in range(1, 7))  # each row ran once


def batch_count(client: TestClient, model: str) -> float:
    prefix = f'batchserve_batch_size_count{{model="{model}"}} '
    line = next((x for x in client.get("/metrics").text.splitlines() if x.startswith(prefix)), None)
    return 0.0 if line is None else float(line.split()[-1])


def test_disabled_in_plain_settings(tmp_path: Path) -> None:
    with make_client(tmp_path, MODELS[:1]) as client:
        wait_ready(client)
        assert client.patch("/models/echo/config", headers=AUTH, json={}).status_code == 403
