"""The served models: their configuration, backend, batcher and state."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from batchserve.backends import backend_class
from batchserve.backends.base import Backend, LoadError
from batchserve.batcher import Batcher
from batchserve.config import ModelConfig
from batchserve.errors import ModelNotFound
from batchserve.metrics import Metrics, ModelMetrics

log = logging.getLogger(__name__)

State = Literal["loading", "ready", "failed", "unloaded"]


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


def artifact_sha256(path: Path) -> str:
    """The digest ``sha256`` pins: a file's own SHA-256; for a folder (a ``save_pretrained``
    layout), the SHA-256 of its sorted ``relative/path<TAB>file-sha256`` lines, so that any
    changed, added or removed file changes it. ``batchserve sha256 PATH`` prints it."""
    if path.is_dir():
        lines = "".join(
            f"{child.relative_to(path).as_posix()}\t{artifact_sha256(child)}\n"
            for child in sorted(path.rglob("*")) if child.is_file())
        return hashlib.sha256(lines.encode()).hexdigest()
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class ModelRegistry:
    """The served models: built from their configs, loaded in the background, and loaded,
    reloaded or unloaded by name at run time (``server/management.py``)."""

    def __init__(self, configs: list[ModelConfig], metrics: Metrics) -> None:
        self._metrics = metrics
        self._models = {config.name: self._build(config) for config in configs}

    def _build(self, config: ModelConfig) -> ServedModel:
        model_metrics = self._metrics.for_model(config.name)
        backend = backend_class(config.backend)(config, model_metrics)
        batcher = Batcher(
            config.name, backend.predict_batch, model_metrics,
            max_batch_size=config.max_batch_size, max_wait_ms=config.max_wait_ms,
            max_queue=config.max_queue, instances=config.instances,
        )
        return ServedModel(config, backend, batcher, model_metrics)

    def __iter__(self) -> Iterator[ServedModel]:
        return iter(list(self._models.values()))

    def get(self, name: str) -> ServedModel:
        model = self._models.get(name)
        if model is None:
            raise ModelNotFound(f"unknown model {name!r:.80}; known models: {sorted(self._models)}")
        return model

    @property
    def ready(self) -> bool:
        """Every model an operator wants served is ready (unloaded ones don't count)."""
        return all(model.ready for model in self._models.values() if model.state != "unloaded")

    async def load_all(self) -> None:
        """Load every model, one at a time; a failure leaves the others serving."""
        for model in list(self._models.values()):
            await self._load(model)
        # Everything loaded so far lives as long as the server: keep it out of the cyclic
        # GC's full collections, which otherwise stall the event loop for tens of ms.
        gc.freeze()

    async def _load(self, model: ServedModel) -> None:
        try:
            await asyncio.to_thread(_load, model)
        except LoadError as exc:
            model.state, model.reason = "failed", str(exc)
            log.error("model %s failed to load: %s", model.config.name, exc)
            return
        except Exception as exc:
            model.state, model.reason = "failed", f"{type(exc).__name__}: {exc}"
            log.exception("model %s failed to load", model.config.name)
            return
        model.batcher.start()
        model.state, model.reason = "ready", None
        model.metrics.model_ready.set(1)
        log.info("model %s ready", model.config.name)

    async def load(self, config: ModelConfig, grace_s: float) -> ServedModel:
        """Load (or reload) a model; the old one, if any, keeps serving until the new one is
        ready, then drains what it admitted within ``grace_s`` and is unloaded."""
        model = self._build(config)
        await self._load(model)
        if model.state != "ready":
            return model
        old = self._models.get(config.name)
        self._models[config.name] = model
        if old is not None:
            await self._retire(old, grace_s)
            model.metrics.model_ready.set(1)
        return model

    async def unload(self, name: str, grace_s: float) -> ServedModel:
        """Stop serving ``name``: new requests get 503, admitted ones finish within ``grace_s``."""
        model = self.get(name)
        await self._retire(model, grace_s)
        model.state, model.reason = "unloaded", "unloaded by the management API"
        return model

    async def _retire(self, model: ServedModel, grace_s: float) -> None:
        was_ready = model.state == "ready"
        model.state = "unloaded"  # refuse new requests at once
        await model.batcher.close(grace_s)
        model.metrics.model_ready.set(0)
        if was_ready:
            await asyncio.to_thread(model.backend.unload)

    async def close(self, grace_s: float) -> None:
        """Drain every batcher within ``grace_s`` (together), then unload the backends."""
        await asyncio.gather(*(m.batcher.close(grace_s) for m in self._models.values()))
        for model in self._models.values():
            model.metrics.model_ready.set(0)
            if model.state == "ready":
                await asyncio.to_thread(model.backend.unload)


def _load(model: ServedModel) -> None:
    config = model.config
    if config.sha256 is not None:
        try:
            actual = artifact_sha256(config.path)
        except OSError as exc:
            raise LoadError(f"cannot read {config.path}: {exc.strerror}") from None
        if actual != config.sha256:
            raise LoadError(f"sha256 of {config.path} is {actual}, but models.toml pins "
                            f"{config.sha256}; refusing to load it")
    model.backend.load(config.device)
    model.backend.warmup()

