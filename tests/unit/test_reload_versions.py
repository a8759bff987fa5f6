"""A model with versions reloaded as a whole (``reload.py``), in one process: the routing a load
gives (the file's, or management's where it stands), a commit refused whole when management's
routing changed since the stage, and where a request goes that found its version taken out."""

from __future__ import annotations

import asyncio
import importlib
from pathlib import Path
from typing import Any

import pytest
from batchserve import reload
from batchserve.config import ModelConfig, load_models
from batchserve.errors import InvalidInput
from batchserve.metrics import Metrics
from batchserve.registry import ModelRegistry
from batchserve.routing import Routing
from batchserve.settings import ServerSettings
from batchserve.state import AppState

from tests.support import write_models

echo: Any = importlib.import_module("batchserve_test_backends")  # tests/plugins, on sys.path


def _configs(path: Path, versions: list[dict[str, Any]]) -> list[ModelConfig]:
    return load_models(write_models(path, [
        {"name": "versioned", "backend": "echo", "path": "x", "max_batch_size": 8, "versions": versions}]))


def _state(tmp_path: Path, versions: list[dict[str, Any]]) -> AppState:
    path = tmp_path / "models.toml"
    registry = ModelRegistry(_configs(path, versions), Metrics(max_batch_size=8))
    return AppState(ServerSettings(config=path, shutdown_grace_s=5), registry, registry._metrics)


def test_the_routing_a_load_gives(tmp_path: Path) -> None:
    state = _state(tmp_path, [{"version": "1", "weight": 0.8}, {"version": "2", "weight": 0.2}])
    router = state.router
    three = _configs(tmp_path / "b.toml", [{"version": "1", "weight": 0.5}, {"version": "2"},
                                          {"version": "3", "weight": 0.5}])
    # Never changed by management: the entry's own.
    assert router.reloaded("versioned", three) == Routing((("1", 0.5), ("2", 0.0), ("3", 0.5)))
    # Changed by management: it stands; v3 joins idle, or as the shadow the entry makes it.
    router.apply("versioned", router.check("versioned", {"1": 0.6, "2": 0.4}, None))
    assert router.reloaded("versioned", three) == Routing((("1", 0.6), ("2", 0.4), ("3", 0.0)))
    shadow = _configs(tmp_path / "c.toml", [{"version": "1"}, {"version": "2"},
                                           {"version": "3", "shadow": 0.25}])
    assert router.reloaded("versioned", shadow) == Routing((("1", 0.6), ("2", 0.4), ("3", 0.0)),
                                                      (("3", 0.25),))
    # Leaving out v2, which has traffic: refused; with its traffic moved, allowed.
    without_2 = _configs(tmp_path / "d.toml", [{"version": "1"}, {"version": "3"}])
    with pytest.raises(InvalidInput, match=r"leaves out versions \['2'\], which take traffic"):
        router.reloaded("versioned", without_2)
    router.apply("versioned", router.check("versioned", {"1": 1.0, "2": 0.0}, None))
    assert router.reloaded("versioned", without_2) == Routing((("1", 1.0), ("3", 0.0)))
    # No versions any more: no routing.
    plain = load_models(write_models(tmp_path / "e.toml", [
        {"name": "versioned", "backend": "echo", "path": "x"}]))
    assert router.reloaded("versioned", plain) is None


def test_a_commit_whose_routing_changed_since_the_stage_is_refused_and_nothing_changes(
        tmp_path: Path) -> None:
    async def main() -> None:
        state = _state(tmp_path, [{"version": "1"}, {"version": "2"}])
        registry, router = state.registry, state.router
        await registry.load_all()
        old = {m.config.key: m for m in registry.versions("versioned")}
        staged = await reload.stage(state, _configs(tmp_path / "b.toml", [{"version": "1"}]))
        # Meanwhile management gives v2 (which the new entry leaves out) traffic.
        router.apply("versioned", router.check("versioned", {"1": 0.5, "2": 0.5}, None))
        with pytest.raises(InvalidInput, match="leaves out versions"):
            await reload.commit(state, staged)
        assert {m.config.key: m for m in registry.versions("versioned")} == old
        assert all(m.ready for m in old.values()) and staged[0].state == "unloaded"
        assert echo.LOADED["versioned"] == 2  # the staged copy unloaded again
        await registry.close(1)

    asyncio.run(main())


def test_a_request_that_found_its_version_taken_out_goes_where_the_new_routing_says(
        tmp_path: Path) -> None:
    async def main() -> None:
        state = _state(tmp_path, [{"version": "1", "weight": 1.0}, {"version": "2"}])
        registry, router = state.registry, state.router
        await registry.load_all()
        v1, v2 = registry.versions("versioned")
        assert router.successor(v1) is None  # serving: no successor
        await reload.load(state, _configs(tmp_path / "b.toml", [{"version": "2"}]))
        [new_v2] = registry.versions("versioned")
        assert router.successor(v1) is new_v2  # taken out: the new routing's pick
        assert router.successor(v2) is new_v2  # replaced: its new copy
        await registry.unload("versioned", 1)
        assert router.successor(new_v2) is None  # unloaded: nowhere (a 503)
        await registry.close(1)

    asyncio.run(main())


def test_a_version_added_between_others_takes_its_place_in_the_files_order(tmp_path: Path) -> None:
    async def main() -> None:
        state = _state(tmp_path, [{"version": "1"}, {"version": "3"}])
        await state.registry.load_all()
        await reload.load(state, _configs(tmp_path / "b.toml", [{"version": "1"}, {"version": "2"},
                                                                 {"version": "3"}]))
        assert [m.config.version for m in state.registry.versions("versioned")] == ["1", "2", "3"]
        assert state.registry.get("versioned").config.version == "3"  # the latest describes it
        await state.registry.close(1)

    asyncio.run(main())
