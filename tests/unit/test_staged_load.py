"""The registry's two-phase load (what a load across worker processes is made of): ``stage``
loads and warms a version without installing it, ``commit`` installs it and retires the old
one, ``abort`` unloads it and leaves the old one serving, untouched."""

from __future__ import annotations

import asyncio
import importlib
from pathlib import Path
from typing import Any

from batchserve.config import ModelConfig, load_models
from batchserve.metrics import Metrics
from batchserve.registry import ModelRegistry

from tests.support import write_models

echo: Any = importlib.import_module("batchserve_test_backends")  # tests/plugins, on sys.path


def _registry(tmp_path: Path, name: str, **options: Any) -> tuple[ModelRegistry, ModelConfig]:
    config = write_models(tmp_path / "models.toml", [
        {"name": name, "backend": "echo", "path": "x", "max_batch_size": 8, "options": options}])
    configs = load_models(config)
    return ModelRegistry(configs, Metrics(max_batch_size=8)), configs[0]


def _ready_gauge(registry: ModelRegistry, name: str) -> float | None:
    return registry._metrics.registry.get_sample_value("batchserve_model_ready",
                                                       {"model": name, "version": ""})


def test_a_staged_version_is_loaded_but_the_old_one_serves_until_commit(tmp_path: Path) -> None:
    async def main() -> None:
        registry, config = _registry(tmp_path, "staged")
        await registry.load_all()
        old = registry.get("staged")
        new = (await registry.stage_all([config.model_copy(update={"options": {"delay_ms": 1}})]))[-1]
        assert new.ready and echo.LOADED["staged"] == 2  # loaded and warm, beside the old one
        assert registry.get("staged") is old and old.ready and not old.batcher.closing
        assert registry.current(old) is None
        await registry.replace(new.config.name, [new], 5)
        assert registry.get("staged") is new and new.config.options == {"delay_ms": 1}
        assert old.state == "unloaded" and echo.LOADED["staged"] == 1
        assert registry.current(old) is new
        assert _ready_gauge(registry, "staged") == 1  # bound to the installed version
        await registry.close(1)

    asyncio.run(main())


def test_an_aborted_version_is_unloaded_and_the_old_one_serves_on(tmp_path: Path) -> None:
    async def main() -> None:
        registry, config = _registry(tmp_path, "aborted")
        await registry.load_all()
        old = registry.get("aborted")
        new = (await registry.stage_all([config]))[-1]
        await registry.abort(new)
        assert new.state == "unloaded" and new.batcher.closing
        assert echo.LOADED["aborted"] == 1  # was 2: the staged copy stayed loaded
        assert registry.get("aborted") is old and old.ready and not old.batcher.closing
        assert _ready_gauge(registry, "aborted") == 1
        await registry.abort(old)  # the serving version is not a staged one: untouched
        assert old.ready
        await registry.close(1)

    asyncio.run(main())


def test_a_failed_stage_is_not_installed(tmp_path: Path) -> None:
    async def main() -> None:
        registry, config = _registry(tmp_path, "failing")
        await registry.load_all()
        old = registry.get("failing")
        new = (await registry.stage_all([config.model_copy(update={"options": {"fail_load": True}})]))[-1]
        assert new.state == "failed" and "told to fail" in str(new.reason)
        assert registry.get("failing") is old and old.ready
        try:
            await registry.replace(new.config.name, [new], 1)
        except ValueError as exc:
            assert "ready" in str(exc)
        else:
            raise AssertionError("a failed version was installed")
        assert registry.get("failing") is old
        await registry.close(1)

    asyncio.run(main())


def test_a_staged_version_has_the_patched_settings(tmp_path: Path) -> None:
    async def main() -> None:
        registry, config = _registry(tmp_path, "patched")
        await registry.load_all()
        registry.configure("patched", {"max_batch_size": 3})
        new = (await registry.stage_all([config]))[-1]
        assert new.config.max_batch_size == 3 and new.batcher.max_batch_size == 3
        await registry.replace(new.config.name, [new], 1)
        assert registry.get("patched").batcher.max_batch_size == 3
        await registry.close(1)

    asyncio.run(main())


def test_a_model_built_as_unloaded_is_known_not_loaded_and_loads_again(tmp_path: Path) -> None:
    """A restarted worker builds what management unloaded before it started as unloaded (the
    others' answer for it, 503, not an unknown model's 404), and a later load serves it."""
    async def main() -> None:
        config = load_models(write_models(tmp_path / "models.toml", [
            {"name": "gone", "backend": "echo", "path": "x"}]))[0]
        registry = ModelRegistry([], Metrics(max_batch_size=8), unloaded=[config])
        await registry.load_all()
        model = registry.get("gone")
        assert (model.state, model.reason) == ("unloaded", "unloaded by the management API")
        assert echo.LOADED.get("gone", 0) == 0 and registry.ready  # unloaded ones don't count
        assert _ready_gauge(registry, "gone") == 0
        reloaded = (await registry.load([config], 1))[-1]
        assert registry.get("gone") is reloaded and reloaded.ready and echo.LOADED["gone"] == 1
        await registry.close(1)

    asyncio.run(main())
