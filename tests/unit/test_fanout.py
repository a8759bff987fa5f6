"""The fan-out's parts on their own: a peer call is bounded by its timeout and tells a worker
that is down from one that failed; an abort that comes while the stage still loads (its
coordinator gave up waiting) unloads the copy when the load ends; the name's lock is one
holder at a time, across open files as across processes."""

from __future__ import annotations

import asyncio
import importlib
from pathlib import Path
from typing import Any

import pytest
from batchserve.cluster import fanout
from batchserve.cluster.rundir import Cluster
from batchserve.config import load_models
from batchserve.errors import LoadFailed
from batchserve.metrics import Metrics
from batchserve.registry import ModelRegistry
from batchserve.settings import ServerSettings
from batchserve.state import AppState

from tests.support import write_models

echo: Any = importlib.import_module("batchserve_test_backends")  # tests/plugins, on sys.path


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Cluster:
    run = Path(tmp_path_factory.mktemp("r"))  # short: a Unix socket's path has at most 107 bytes
    cluster = Cluster(run, 0, 2)
    cluster.create_dirs()
    return cluster


def test_a_worker_that_is_down_is_unreachable(cluster: Cluster) -> None:
    worker = fanout.RemoteWorker(cluster, 1, grace_s=1)
    with pytest.raises(fanout.Unreachable, match="not reachable"):
        asyncio.run(worker.configure("echo", {"max_batch_size": 2}))


def test_a_worker_that_does_not_answer_times_out(cluster: Cluster,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fanout, "CONFIGURE_TIMEOUT_S", 0.2)

    async def main() -> None:
        answered = asyncio.Event()

        async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1)  # takes the request, never answers
            await answered.wait()
            writer.close()
            await writer.wait_closed()

        server = await asyncio.start_unix_server(hold, path=str(cluster.socket_path(1)))
        async with server:
            outcomes = await fanout._each({1: fanout.RemoteWorker(cluster, 1, grace_s=1)},
                                          lambda w: w.configure("echo", {"max_batch_size": 2}))
            answered.set()
            await asyncio.sleep(0.05)  # the handler closes its end
        assert outcomes == {1: "no answer within 0.2 s"}

    asyncio.run(main())


def test_an_abort_during_the_stage_unloads_the_copy_when_it_loaded(
        cluster: Cluster, tmp_path: Path) -> None:
    config = write_models(tmp_path / "models.toml", [
        {"name": "late", "backend": "echo", "path": "x", "options": {"load_delay_ms": 300}}])

    async def main() -> None:
        metrics = Metrics(max_batch_size=1)
        state = AppState(ServerSettings(config=config), ModelRegistry(load_models(config), metrics),
                         metrics, cluster=cluster)
        await state.registry.load_all()
        worker = fanout.LocalWorker(state)
        staging = asyncio.create_task(worker.stage("late", "s1"))
        await asyncio.sleep(0.05)  # loading
        await worker.abort("late", "s1")
        with pytest.raises(LoadFailed, match="aborted while it loaded"):
            await staging
        assert echo.LOADED["late"] == 1  # the serving copy alone; was 2
        with pytest.raises(LoadFailed, match="no version of 'late' staged"):
            await worker.commit("late", "s1")
        await state.registry.close(1)

    asyncio.run(main())


def test_the_names_lock_has_one_holder_at_a_time(cluster: Cluster) -> None:
    async def main() -> None:
        order: list[str] = []

        async def hold(who: str) -> None:
            async with fanout.name_lock(cluster, "echo"):
                order.append(f"{who} in")
                await asyncio.sleep(0.1)
                order.append(f"{who} out")

        await asyncio.gather(hold("a"), hold("b"))
        assert order in (["a in", "a out", "b in", "b out"], ["b in", "b out", "a in", "a out"])

    asyncio.run(main())
