"""desired.json: what management made of the models, so that a restarted worker serves what
the others serve (PATCHed settings, unloaded models known as unloaded, the version loaded last)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from batchserve.cluster import desired
from batchserve.cluster.rundir import Cluster
from batchserve.config import ModelConfig, load_models

from tests.support import write_models


def _cluster(tmp_path: Path) -> Cluster:
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    cluster = Cluster(run, 0, 2)
    cluster.create_dirs()
    return cluster


def _configs(tmp_path: Path, **options: float) -> list[ModelConfig]:
    return load_models(write_models(tmp_path / "models.toml", [
        {"name": "a", "backend": "echo", "path": "x", "max_batch_size": 8, "options": options},
        {"name": "b", "backend": "echo", "path": "x"}]))


def test_the_first_start_records_the_repository_and_serves_it(tmp_path: Path) -> None:
    cluster = _cluster(tmp_path)
    configs = _configs(tmp_path)
    assert desired.apply_desired(cluster, configs) == (configs, [])
    assert set(json.loads(cluster.desired_path.read_text())["models"]) == {"a", "b"}


def test_a_restarted_worker_gets_the_patched_settings_and_the_unloaded_models_as_unloaded(
        tmp_path: Path) -> None:
    cluster = _cluster(tmp_path)
    desired.apply_desired(cluster, _configs(tmp_path))
    desired.record_overrides(cluster, "a", {"max_batch_size": 3})
    desired.record_overrides(cluster, "a", {"max_wait_ms": 2.0})
    desired.record_unload(cluster, "b")
    restarted, unloaded = desired.apply_desired(cluster, _configs(tmp_path))
    assert [c.name for c in restarted] == ["a"] and [c.name for c in unloaded] == ["b"]
    assert (restarted[0].max_batch_size, restarted[0].max_wait_ms) == (3, 2.0)
    assert desired.overrides(cluster, "a") == {"max_batch_size": 3, "max_wait_ms": 2.0}


def test_a_restarted_worker_serves_the_version_loaded_last_not_the_files(tmp_path: Path) -> None:
    cluster = _cluster(tmp_path)
    desired.apply_desired(cluster, _configs(tmp_path))
    desired.record_overrides(cluster, "a", {"max_batch_size": 3})
    desired.record_unload(cluster, "b")
    loaded = _configs(tmp_path, delay_ms=1)  # a reload of "a" and of "b" (loaded again)
    desired.record_load(cluster, "a", [loaded[0]], None)
    desired.record_load(cluster, "b", [loaded[1]], None)
    # The file changed since, but no worker was told to load it: the restarted one doesn't.
    restarted, unloaded = desired.apply_desired(cluster, _configs(tmp_path, delay_ms=7))
    assert [c.name for c in restarted] == ["a", "b"] and unloaded == []
    assert restarted[0].options == {"delay_ms": 1} and restarted[0].max_batch_size == 3


def test_concurrent_changes_lose_none_and_leave_no_temporary_file(tmp_path: Path) -> None:
    cluster = _cluster(tmp_path)
    desired.apply_desired(cluster, _configs(tmp_path))

    def patch(name: str, field: str) -> None:
        for value in range(1, 41):
            desired.record_overrides(cluster, name, {field: value})

    threads = [threading.Thread(target=patch, args=(name, field)) for name in ("a", "b")
               for field in ("max_batch_size", "max_queue")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for name in ("a", "b"):
        assert desired.overrides(cluster, name) == {"max_batch_size": 40, "max_queue": 40}
    assert sorted(p.name for p in cluster.run_dir.iterdir()) == [
        "desired.json", "desired.lock", "locks", "metrics", "workers"]


def test_a_starting_worker_reads_the_changes_again_only_once_its_peer_socket_listens(
        tmp_path: Path) -> None:
    """A change recorded after the worker read desired.json at its start reaches it either
    through its socket (once it listens) or by this second read (after it listens): the read
    waits for the socket, so a change made between the two reaches it as well."""
    import asyncio

    from batchserve.cluster.peers import reapply_desired
    from batchserve.metrics import Metrics
    from batchserve.registry import ModelRegistry
    from batchserve.settings import ServerSettings
    from batchserve.state import AppState

    cluster = _cluster(tmp_path)
    served, unloaded = desired.apply_desired(cluster, _configs(tmp_path))
    state = AppState(settings=ServerSettings(config=tmp_path / "models.toml"),
                     registry=ModelRegistry(served, Metrics(max_batch_size=8), unloaded=unloaded),
                     metrics=Metrics(max_batch_size=8), cluster=cluster)

    async def main() -> None:
        await state.registry.load_all()
        reapplying = asyncio.create_task(reapply_desired(state))
        await asyncio.sleep(0.1)  # the socket does not listen yet
        desired.record_overrides(cluster, "a", {"max_batch_size": 3})  # its fan-out missed this one
        desired.record_unload(cluster, "b")
        cluster.socket_path(cluster.index).touch()  # as bind(2) makes it
        await asyncio.wait_for(reapplying, 5)
        assert state.registry.get("a").config.max_batch_size == 3
        assert state.registry.get("b").state == "unloaded"
        await state.registry.close(1)

    asyncio.run(main())
