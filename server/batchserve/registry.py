"""The served models: their configuration, backend, batcher and state."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from batchserve.artifacts import artifact_sha256 as artifact_sha256  # re-exported: its old home
from batchserve.artifacts import pinned
from batchserve.backends import backend_class
from batchserve.backends.base import Backend, LoadError, cause
from batchserve.batcher import Batcher
from batchserve.changes import Changes
from batchserve.config import ModelConfig
from batchserve.errors import ModelNotFound
from batchserve.metrics import Metrics, ModelMetrics

if TYPE_CHECKING:  # imported only when tracing is on (OpenTelemetry is an extra)
    from batchserve.tracing import Tracing

log = logging.getLogger(__name__)

State = Literal["loading", "ready", "failed", "unloaded"]
UNLOADED = "unloaded by the management API"


@dataclass(eq=False)
class ServedModel:
    config: ModelConfig
    backend: Backend[Any, Any]
    batcher: Batcher
    metrics: ModelMetrics
    state: State = "loading"
    reason: str | None = None

    @property
    def ready(self) -> bool:
        return self.state == "ready" and self.batcher.broken is None

    def status(self) -> dict[str, Any]:
        reason = self.reason if self.batcher.broken is None else self.batcher.broken
        state = self.state if self.batcher.broken is None else "failed"
        return {"state": state, "reason": reason}


class ModelRegistry:
    """The served models: built from their configs, loaded in the background, and loaded,
    reloaded or unloaded by name at run time (``batchserve/management.py``).

    A name's metrics (its ``model_ready`` and queue gauges) tell the copy that serves it: they
    are bound when a copy is installed, not when it is built, so they stay true while a new
    copy loads and after one fails to. Loads, reloads and unloads of one model (all its
    versions) run one at a time (a lock per model name), the startup load included."""

    def __init__(self, configs: list[ModelConfig], metrics: Metrics, *,
                 unloaded: list[ModelConfig] | None = None, tracing: Tracing | None = None) -> None:
        self._metrics = metrics
        self._tracing = tracing
        self._locks: dict[str, asyncio.Lock] = {}
        self._overrides: dict[str, dict[str, Any]] = {}
        self._models: dict[str, ServedModel] = {}
        self.on_ready: Callable[[], None] | None = None
        """Called when a model becomes ready (a worker writes its status file then, so the
        others' ``/readyz`` never reads it as still loading after this worker said ready)."""
        self.changes = Changes()
        """Notified when a model's state changes (loaded, failed, installed, unloaded); a
        batching loop that stops is not notified (``Batcher.broken``: read it)."""
        for config in configs:
            self._install(self._build(config))
        for config in unloaded or []:  # a restarted worker's, unloaded by management before
            model = self._build(config)
            model.state, model.reason = "unloaded", UNLOADED
            self._install(model)

    def _build(self, config: ModelConfig) -> ServedModel:
        model_metrics = self._metrics.for_model(config.name, config.version)
        backend = backend_class(config.backend)(config, model_metrics)
        batcher = Batcher(
            config.key, backend.predict_batch, model_metrics,
            max_batch_size=config.max_batch_size, max_wait_ms=config.max_wait_ms,
            max_queue=config.max_queue, instances=config.instances,
            on_loop_when_cheap=backend.predict_on_loop_when_cheap,
            tracing=self._tracing, device=config.device,
        )
        return ServedModel(config, backend, batcher, model_metrics)

    def _install(self, model: ServedModel) -> None:
        """Make ``model`` the version serving its name, settings changed by PATCH applied, and
        bind its name's gauges to it (read at scrape time)."""
        key = model.config.key
        self._models[key] = model
        if key in self._overrides:
            _apply(model, self._overrides[key])
        batcher = model.batcher
        model.metrics.watch_queue(lambda: batcher.queued_rows)
        model.metrics.watch_ready(lambda: 1.0 if model.ready else 0.0)
        self.changes.notify()

    def _lock(self, name: str) -> asyncio.Lock:
        """The lock of model ``name`` (its ``config.name``: one for all its versions)."""
        return self._locks.setdefault(name, asyncio.Lock())

    def __iter__(self) -> Iterator[ServedModel]:
        return iter(list(self._models.values()))

    def __contains__(self, key: object) -> bool:
        """A copy is served under ``key`` (a ``ModelConfig.key``), in whatever state."""
        return key in self._models

    def entries(self, name: str) -> list[ServedModel]:
        """What is served under ``name``: the model, or each of its versions (oldest first); a
        ``ModelConfig.key`` names one. A 404 when nothing is."""
        model = self._models.get(name)
        found = [model] if model is not None else self.versions(name)
        if not found:
            self.get(name)  # the 404 that names the known models
        return found

    def get(self, name: str) -> ServedModel:
        """The model served under ``name`` (a ``ModelConfig.key``); for the name of a model with
        versions, its latest loaded version (what describes the model: ``routing.py`` picks the
        one that serves a request)."""
        model = self._models.get(name)
        if model is None:
            versions = self.versions(name)
            if versions:
                return versions[-1]
            raise ModelNotFound(f"unknown model {name!r:.80}; known models: {self.names()}")
        return model

    def get_version(self, name: str, version: str) -> ServedModel | None:
        """Version ``version`` of ``name``, if it is loaded."""
        return self._models.get(f"{name}:{version}")

    def names(self) -> list[str]:
        """The served models' names (once each, however many versions they have), sorted."""
        return sorted({m.config.name for m in self._models.values()})

    def versions(self, name: str) -> list[ServedModel]:
        """The loaded versions of ``name``, in the repository file's order (oldest first); none
        for a model without versions."""
        return [m for m in self._models.values()
                if m.config.name == name and m.config.version is not None]

    def current(self, model: ServedModel) -> ServedModel | None:
        """The ready version now serving ``model``'s key, when a reload replaced ``model``;
        else ``None``. A request that found ``model`` before the swap moves to it."""
        current = self._models.get(model.config.key)
        return current if current is not None and current is not model and current.ready else None

    def configure(self, name: str, changes: dict[str, Any]) -> list[ServedModel]:
        """Change a running model's batcher settings (PATCH): every version of it, or the one a
        key names; they outlive reloads (over the repository file's values) until the process
        restarts."""
        models = self.entries(name)
        for model in models:
            self._overrides[model.config.key] = {**self._overrides.get(model.config.key, {}), **changes}
            _apply(model, changes)
        return models

    @property
    def ready(self) -> bool:
        """Every model an operator wants served is ready (unloaded ones don't count)."""
        return self.is_ready(strict=True)

    def is_ready(self, *, strict: bool) -> bool:
        """``ready``; or, not ``strict``, no model is loading and every one that loaded is ready
        (one that failed to load does not count; one whose batching loop stopped does)."""
        return all(model.ready for model in self._models.values()
                   if model.state != "unloaded" and (strict or model.state != "failed"))

    def broken(self) -> dict[str, str]:
        """Served models whose batching loop stopped, and why: only a restart mends them."""
        return {key: model.batcher.broken for key, model in self._models.items()
                if model.batcher.broken is not None and model.state != "unloaded"}

    async def load_all(self) -> None:
        """Load every model, one at a time; a failure leaves the others serving."""
        for model in list(self._models.values()):
            async with self._lock(model.config.name):
                # A management load or unload of this name may have come first.
                if self._models.get(model.config.key) is model and model.state == "loading":
                    await self._load(model)
        # Everything loaded so far lives as long as the server: keep it out of the cyclic
        # GC's full collections, which otherwise stall the event loop for tens of ms.
        gc.freeze()

    async def _load(self, model: ServedModel) -> None:
        try:
            await asyncio.to_thread(_load, model)
        except LoadError as exc:
            model.state, model.reason = "failed", cause(exc)
            log.error("model %s failed to load: %s", model.config.key, exc)
            self.changes.notify()
            return
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            model.state, model.reason = "failed", reason
            log.exception("model %s failed to load", model.config.key)
            self.changes.notify()
            return
        model.batcher.start()
        model.state, model.reason = "ready", None
        model.metrics.refresh()  # in a worker, the gauge's file says so now, not at the next tick
        self.changes.notify()
        if self.on_ready is not None:
            self.on_ready()
        log.info("model %s ready", model.config.key)

    async def load(self, configs: list[ModelConfig], grace_s: float,
                   swap: Callable[[list[ServedModel]], None] | None = None) -> list[ServedModel]:
        """Load (or reload) one model, every version of it (``configs``), under one hold of its
        name's lock, so that loads of one name run one at a time: ``stage_all``, then, when every
        copy is ready, ``replace`` with ``swap(staged)`` (the routing over them). The old copies
        serve until then. A failed load leaves them serving (the failed copy returned last)."""
        async with self._lock(configs[0].name):
            staged = await self._stage_all(configs)
            if staged[-1].state == "ready":
                try:
                    await self._replace(configs[0].name, staged, grace_s,
                                        None if swap is None else lambda: swap(staged))
                except BaseException:
                    for model in staged:
                        await self._retire(model, 0)
                    raise
            return staged

    async def stage_all(self, configs: list[ModelConfig]) -> list[ServedModel]:
        """The first half of a load, for a load that must succeed on every worker before any
        serves it (``batchserve/cluster/fanout.py``): build, load and warm a new copy of each of
        one model's versions (``configs``; settings changed by PATCH applied), but install none;
        the old ones serve on. Every one ``ready`` (then ``replace`` or ``abort`` them); or, when
        one fails, the ones staged before it aborted, and the failed one last."""
        async with self._lock(configs[0].name):
            return await self._stage_all(configs)

    async def _stage_all(self, configs: list[ModelConfig]) -> list[ServedModel]:
        staged: list[ServedModel] = []
        for config in configs:
            model = await self._stage(config)
            staged.append(model)
            if model.state != "ready":
                for ready in staged[:-1]:
                    await self._retire(ready, 0)
                break
        return staged

    async def replace(self, name: str, models: list[ServedModel], grace_s: float,
                      swap: Callable[[], None] | None = None) -> None:
        """Serve ``models`` (staged, ready) as everything model ``name`` is, in one step:
        ``swap()`` first (the new routing over them; it may refuse, raising, and then nothing
        changed), then each installed over the copy of its key, and every other copy of
        ``name`` (a version the new set leaves out) taken out; a request that finds one of
        those gone moves on (``routing.Router.successor``). The copies replaced then drain what
        they admitted within ``grace_s`` and are unloaded."""
        async with self._lock(name):
            await self._replace(name, models, grace_s, swap)

    async def abort(self, model: ServedModel) -> None:
        """Unload a staged copy that will not be installed; the serving one is untouched."""
        async with self._lock(model.config.name):
            if self._models.get(model.config.key) is not model and model.state != "unloaded":
                await self._retire(model, 0)
                model.reason = "staged, then aborted: another worker failed to load it"

    async def _stage(self, config: ModelConfig) -> ServedModel:
        model = self._build(config.model_copy(update=self._overrides.get(config.key, {})))
        await self._load(model)
        return model

    async def _replace(self, name: str, models: list[ServedModel], grace_s: float,
                       swap: Callable[[], None] | None) -> None:
        for model in models:
            if model.state != "ready" or model.config.name != name:
                raise ValueError(f"only ready copies of {name!r} can be installed, not "
                                 f"{model.config.key!r} ({model.state})")
        if swap is not None:
            swap()
        # From here to the installs, no await: a request sees the old set or the new one.
        replaced = [m for m in self._models.values() if m.config.name == name and m not in models]
        for old in replaced:  # installed afresh, in the new set's order (the repository file's)
            del self._models[old.config.key]
        for model in models:
            self._install(model)
        await asyncio.gather(*(self._retire(old, grace_s) for old in replaced
                               if old.state != "unloaded"))

    async def unload(self, name: str, grace_s: float) -> ServedModel:
        """Stop serving ``name`` (every version of it, or the one a key names): new requests get
        503, admitted ones finish within ``grace_s``. Returns what ``get(name)`` returns."""
        models = self.entries(name)
        async with self._lock(models[0].config.name):
            models = self.entries(name)  # as they are once the lock is held
            await asyncio.gather(*(self._retire(model, grace_s) for model in models))
            for model in models:
                model.reason = UNLOADED
            return self.get(name)

    async def _retire(self, model: ServedModel, grace_s: float) -> None:
        was_ready = model.state == "ready"
        model.state = "unloaded"  # refuse new requests at once
        model.metrics.refresh()
        self.changes.notify()
        await model.batcher.close(grace_s)
        if was_ready:
            await asyncio.to_thread(model.backend.unload)

    async def close(self, grace_s: float) -> None:
        """Drain every batcher within ``grace_s`` (together), then unload the backends."""
        await asyncio.gather(*(m.batcher.close(grace_s) for m in self._models.values()))
        for model in self._models.values():
            model.metrics.watch_ready(lambda: 0.0)
            if model.state == "ready":
                await asyncio.to_thread(model.backend.unload)


def _apply(model: ServedModel, changes: dict[str, Any]) -> None:
    model.config = model.config.model_copy(update=changes)
    model.batcher.reconfigure(max_batch_size=model.config.max_batch_size,
                              max_wait_ms=model.config.max_wait_ms, max_queue=model.config.max_queue)


def _load(model: ServedModel) -> None:
    config = model.config
    if config.sha256 is None:
        model.backend.load(config.device)
    else:
        # The backend reads the files that were hashed, through a path of their own
        # (server/batchserve/artifacts.py), not the configured path a second time.
        with pinned(config.path, config.sha256) as path:
            _load_from(model.backend, path)
    model.backend.warmup()


def _load_from(backend: Backend[Any, Any], path: Path) -> None:
    """``backend.load`` reading ``path`` as its ``config.path``; messages name the configured one."""
    config = backend.config
    backend.config = config.model_copy(update={"path": path})
    try:
        backend.load(config.device)
    except LoadError as exc:
        raise LoadError(str(exc).replace(str(path), str(config.path))) from None
    finally:
        backend.config = config
