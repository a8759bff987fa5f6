"""The served models: their configuration, backend, batcher and state."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from server.backends import backend_class
from server.backends.base import Backend, LoadError
from server.batcher import Batcher
from server.config import ModelConfig
from server.errors import ModelNotFound
from server.metrics import Metrics, ModelMetrics

log = logging.getLogger(__name__)

State = Literal["loading", "ready", "failed"]


@dataclass(eq=False)
class ServedModel:
    config: ModelConfig
    backend: Backend
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
    """Builds one backend and batcher per configured model and loads them in the background."""

    def __init__(self, configs: list[ModelConfig], metrics: Metrics) -> None:
        self._models: dict[str, ServedModel] = {}
        for config in configs:
            model_metrics = metrics.for_model(config.name)
            backend = backend_class(config.backend)(config, model_metrics)
            batcher = Batcher(
                config.name, backend.predict_batch, model_metrics,
                max_batch_size=config.max_batch_size, max_wait_ms=config.max_wait_ms,
                max_queue=config.max_queue, instances=config.instances,
            )
            self._models[config.name] = ServedModel(config, backend, batcher, model_metrics)

    def __iter__(self) -> Any:
        return iter(self._models.values())

    def get(self, name: str) -> ServedModel:
        model = self._models.get(name)
        if model is None:
            raise ModelNotFound(f"unknown model {name!r:.80}; known models: {sorted(self._models)}")
        return model

    @property
    def ready(self) -> bool:
        return all(model.ready for model in self._models.values())

    async def load_all(self) -> None:
        """Load every model, one at a time; a failure leaves the others serving."""
        for model in self._models.values():
            try:
                await asyncio.to_thread(_load, model)
            except LoadError as exc:
                model.state, model.reason = "failed", str(exc)
                log.error("model %s failed to load: %s", model.config.name, exc)
                continue
            except Exception as exc:
                model.state, model.reason = "failed", f"{type(exc).__name__}: {exc}"
                log.exception("model %s failed to load", model.config.name)
                continue
            model.batcher.start()
            model.state = "ready"
            model.metrics.model_ready.set(1)
            log.info("model %s ready", model.config.name)
        # Everything loaded so far lives as long as the server: keep it out of the cyclic
        # GC's full collections, which otherwise stall the event loop for tens of ms.
        gc.freeze()

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

