"""``ModelRegistry.changes`` is notified at each change of a model's state, the real registry
over the echo test model: what wakes gRPC's ``Health/Watch`` at once, not at its next poll."""

from __future__ import annotations

import asyncio
from pathlib import Path

from batchserve.config import load_models
from batchserve.metrics import Metrics
from batchserve.registry import ModelRegistry

from tests.support import write_models


def _registry(tmp_path: Path, **options: object) -> tuple[ModelRegistry, Path]:
    config = write_models(tmp_path / "models.toml", [
        {"name": "echo", "backend": "echo", "path": "x", "options": options}])
    return ModelRegistry(load_models(config), Metrics(max_batch_size=8)), config


def test_a_load_an_unload_and_a_reload_each_notify(tmp_path: Path) -> None:
    registry, config = _registry(tmp_path)

    async def follow() -> None:
        try:
            loaded = registry.changes.next()
            await registry.load_all()
            assert loaded.is_set() and registry.get("echo").state == "ready"
            unloaded = registry.changes.next()
            await registry.unload("echo", 1.0)
            assert unloaded.is_set() and registry.get("echo").state == "unloaded"
            reloaded = registry.changes.next()
            await registry.load([load_models(config)[0]], 1.0)
            assert reloaded.is_set() and registry.get("echo").state == "ready"
        finally:
            await registry.close(1.0)

    asyncio.run(follow())


def test_a_failed_load_notifies(tmp_path: Path) -> None:
    registry, _ = _registry(tmp_path, fail_load=True)

    async def follow() -> None:
        try:
            failed = registry.changes.next()
            await registry.load_all()
            assert failed.is_set() and registry.get("echo").state == "failed"
        finally:
            await registry.close(1.0)

    asyncio.run(follow())


def test_a_notify_wakes_every_waiter_and_only_those_that_waited_before_it() -> None:
    async def follow() -> None:
        registry = ModelRegistry([], Metrics(max_batch_size=1))
        before = registry.changes.next()
        waiters = [asyncio.create_task(before.wait()) for _ in range(3)]
        await asyncio.sleep(0)
        registry.changes.notify()
        after = registry.changes.next()
        await asyncio.wait_for(asyncio.gather(*waiters), 30.0)
        assert before.is_set() and not after.is_set()

    asyncio.run(follow())
