"""Reloads through the real registry and app: a name's metrics tell the version that serves
it (while a new one loads, and after one failed to), loads of one name run one at a time,
settings changed by PATCH outlive a reload, and admission follows a swap."""

from __future__ import annotations

import asyncio
import importlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from batchserve.app import create_app
from batchserve.config import load_models
from batchserve.metrics import Metrics
from batchserve.registry import ModelRegistry
from batchserve.settings import ServerSettings
from fastapi.testclient import TestClient
from pydantic import SecretStr

from tests.support import wait_ready, write_models

echo: Any = importlib.import_module("batchserve_test_backends")  # tests/plugins, on sys.path
TOKEN = "correct-horse-battery-staple"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def metric(client: TestClient | httpx.Client, name: str, model: str) -> float:
    prefix = f'{name}{{model="{model}"}} '
    line = next(x for x in client.get("/metrics").text.splitlines() if x.startswith(prefix))
    return float(line.split()[-1])


@pytest.fixture
def held(tmp_path: Path) -> Iterator[tuple[TestClient, Path, Path]]:
    """A model whose batches wait until the file ``go`` exists, one row per batch."""
    go = tmp_path / "go"
    config = write_models(tmp_path / "models.toml", [
        {"name": "held", "backend": "echo", "path": "x", "max_batch_size": 1,
         "options": {"hold_until": str(go)}}])
    app = create_app(ServerSettings(config=config, management_token=SecretStr(TOKEN),
                                    shutdown_grace_s=10), load_models(config))
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_ready(client)
        yield client, config, go
        go.touch()


def test_a_failed_reload_leaves_the_serving_models_metrics_true(
        held: tuple[TestClient, Path, Path]) -> None:
    client, config, go = held
    codes: list[int] = []
    threads = [threading.Thread(target=lambda: codes.append(
        client.post("/predict", json={"model": "held", "inputs": [1]}).status_code)) for _ in range(3)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while client.get("/models/held").json()["queued_rows"] < 2 and time.monotonic() < deadline:
        time.sleep(0.01)  # one row held in the backend, two queued behind it
    assert metric(client, "batchserve_queue_rows", "held") == 2
    write_models(config, [{"name": "held", "backend": "echo", "path": "x",
                           "options": {"fail_load": True}}])
    response = client.post("/v2/repository/models/held/load", headers=AUTH)
    assert response.status_code == 409
    assert metric(client, "batchserve_model_ready", "held") == 1  # was 0: "not ready"
    assert metric(client, "batchserve_queue_rows", "held") == 2  # was 0: the failed copy's queue
    go.touch()
    for thread in threads:
        thread.join(30)
    assert codes == [200, 200, 200]
    assert metric(client, "batchserve_queue_rows", "held") == 0


def test_settings_changed_by_patch_outlive_a_reload(held: tuple[TestClient, Path, Path]) -> None:
    client, _, go = held
    go.touch()
    assert client.patch("/models/held/config", headers=AUTH,
                        json={"max_batch_size": 3, "timeout_ms": 4000}).status_code == 200
    assert client.post("/v2/repository/models/held/load", headers=AUTH).status_code == 200
    config = client.get("/models/held").json()["config"]
    assert (config["max_batch_size"], config["timeout_ms"]) == (3, 4000)
    state = client.app.state.batchserve  # type: ignore[attr-defined]
    assert state.registry.get("held").batcher.max_batch_size == 3


def _registry(tmp_path: Path, name: str, load_delay_ms: float) -> tuple[ModelRegistry, Any]:
    config = write_models(tmp_path / "models.toml", [
        {"name": name, "backend": "echo", "path": "x", "options": {"load_delay_ms": load_delay_ms}}])
    configs = load_models(config)
    return ModelRegistry(configs, Metrics(max_batch_size=1)), configs[0]


async def _load_one(registry: ModelRegistry, config: Any, grace_s: float) -> Any:
    return (await registry.load([config], grace_s))[-1]


def test_concurrent_loads_of_one_name_run_one_at_a_time(tmp_path: Path) -> None:
    async def main() -> None:
        registry, config = _registry(tmp_path, "thrice", 200)
        await registry.load_all()
        loaded = await asyncio.gather(*(_load_one(registry, config, 5) for _ in range(3)))
        assert [model.state for model in loaded] == ["unloaded", "unloaded", "ready"]  # in turn
        assert registry.get("thrice") is loaded[-1]
        assert echo.PEAK["thrice"] == 2  # the serving copy and one new; was 4
        assert echo.LOADED["thrice"] == 1
        await registry.close(1)

    asyncio.run(main())


def test_a_load_during_the_startup_load_does_not_leak_it(tmp_path: Path) -> None:
    async def main() -> None:
        registry, config = _registry(tmp_path, "early", 300)
        startup = asyncio.create_task(registry.load_all())
        await asyncio.sleep(0.05)  # the startup load is under way (or queued: either way)
        # A quicker copy, so that without the lock it would be installed first.
        model = (await registry.load([config.model_copy(update={"options": {}})], 5))[-1]
        await startup
        assert registry.get("early") is model and model.ready
        assert echo.LOADED["early"] == 1  # was 2: the startup copy loaded, started, never unloaded
        await registry.close(1)
        assert echo.LOADED["early"] == 0

    asyncio.run(main())


def test_admission_follows_a_reload(tmp_path: Path) -> None:
    async def main() -> None:
        registry, config = _registry(tmp_path, "swapped", 0)
        await registry.load_all()
        old = registry.get("swapped")
        new = (await registry.load([config], 5))[-1]
        assert old.batcher.closing and new is not old
        assert registry.current(old) is new and registry.current(new) is None
        await registry.close(1)

    asyncio.run(main())
