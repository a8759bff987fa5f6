"""/healthz and /readyz of one worker answer for the whole server, from the other workers'
status files: a broken batching loop or a stuck worker anywhere fails liveness, and readiness
waits for every worker."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from batchserve.app import create_app
from batchserve.cluster.rundir import Cluster
from batchserve.cluster.status import STUCK_S
from batchserve.config import load_models
from batchserve.settings import ServerSettings
from fastapi.testclient import TestClient

from tests.support import wait_ready, write_models


def worker_zero(tmp_path: Path) -> tuple[TestClient, Cluster]:
    config = write_models(tmp_path / "models.toml", [
        {"name": "echo", "backend": "echo", "path": str(tmp_path), "max_batch_size": 4}])
    cluster = Cluster(tmp_path / "run", 0, 2)
    cluster.run_dir.mkdir()
    cluster.create_dirs()
    app = create_app(ServerSettings(config=config), load_models(config), cluster=cluster)
    return TestClient(app), cluster


def other(cluster: Cluster, **status: Any) -> None:
    """Worker 1's status file, as it would write it (this process stands in for it)."""
    defaults: dict[str, Any] = {"pid": os.getpid(), "index": 1, "written": time.time(), "ready": True,
                                "draining": False, "models": {"echo": {"state": "ready"}}, "broken": {}}
    cluster.status_path(1).write_text(json.dumps({**defaults, **status}))


def test_readiness_waits_for_every_worker(tmp_path: Path) -> None:
    client, cluster = worker_zero(tmp_path)
    with client:
        wait_ready(client)
        absent = client.get("/readyz")  # worker 1 has written nothing yet
        assert absent.status_code == 503
        assert absent.json()["workers"] == {"1": "not running (starting, or being restarted)"}
        other(cluster, ready=False, models={"echo": {"state": "loading"}})
        assert client.get("/readyz").json()["workers"] == {"1": "models not ready: ['echo']"}
        other(cluster)
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["workers"] == {"1": "ready"}


def test_a_broken_loop_or_a_stuck_worker_anywhere_fails_liveness(tmp_path: Path) -> None:
    client, cluster = worker_zero(tmp_path)
    with client:
        wait_ready(client)
        other(cluster)
        assert client.get("/healthz").json() == {"status": "alive"}
        other(cluster, broken={"echo": "batching loop stopped: test"})
        broken = client.get("/healthz")
        assert broken.status_code == 503
        assert broken.json() == {"status": "broken",
                                 "models": {"echo (worker 1)": "batching loop stopped: test"}}
        other(cluster, written=time.time() - STUCK_S - 5)
        stuck = client.get("/healthz")
        assert stuck.status_code == 503 and stuck.json()["status"] == "stuck"
        assert stuck.json()["workers"]["1"].startswith("stuck: no status for")
        assert client.get("/readyz").status_code == 503  # a stuck worker is not ready either


def test_a_worker_writes_its_status_the_moment_its_models_are_ready(tmp_path: Path) -> None:
    """Not at its next tick (every 0.5 s): the other workers' /readyz would read this one as still
    loading after it answered ready itself (a readiness that flapped 200 -> 503 at start)."""
    config = write_models(tmp_path / "models.toml", [
        {"name": "echo", "backend": "echo", "path": str(tmp_path), "max_batch_size": 4,
         "options": {"load_delay_ms": 300}}])
    cluster = Cluster(tmp_path / "run", 0, 2)
    cluster.run_dir.mkdir()
    cluster.create_dirs()
    app = create_app(ServerSettings(config=config), load_models(config), cluster=cluster)
    state = app.state.batchserve
    seen: list[bool] = []
    ready = state.registry.on_ready
    with TestClient(app):
        assert state.registry.on_ready is not None and ready is None  # set by the lifespan
        hook = state.registry.on_ready

        def check() -> None:  # right after the hook's own write: the file already says ready
            hook()
            seen.append(json.loads(cluster.status_path(0).read_text())["ready"])

        state.registry.on_ready = check
        deadline = time.monotonic() + 30
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
    assert seen == [True]
