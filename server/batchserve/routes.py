"""Operator routes: health, readiness, the models and the metrics. Inference is served by the
protocol adapters over ``batchserve/pipeline.py`` (``/predict`` in ``batchserve/predict.py``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from batchserve.cluster.status import read_workers
from batchserve.config import repository_root
from batchserve.metrics_multiprocess import scrape_metrics
from batchserve.public_paths import PublicPaths
from batchserve.registry import ServedModel
from batchserve.schemas import ERROR_RESPONSES
from batchserve.state import AppState


def add_routes(router: APIRouter, state: AppState) -> None:
    """Register the operator routes on the app's own router. They answer anyone who reaches the
    port: artifacts' paths show relative to the repository root, never absolute."""
    registry = state.registry
    shown = PublicPaths(repository_root(state.settings.config))

    @router.get("/models", summary="Every configured model (each loaded version of one that has "
                "versions, with its weight and role), its state and its I/O")
    async def list_models() -> dict[str, Any]:
        return {"models": [info(m) for m in registry]}

    @router.get("/models/{name}", summary="One model, its state and its I/O",
                responses={404: ERROR_RESPONSES[404]})
    async def get_model(name: str) -> dict[str, Any]:
        return info(registry.get(name))

    def info(model: ServedModel) -> dict[str, Any]:
        return {**_model_info(model, shown), **state.router.describe(model)}

    @router.get("/healthz", summary="Liveness: 200 while the server answers and no model's "
                "batching loop has stopped, in any worker (503 names the broken ones or a stuck "
                "worker: restart the server)")
    async def healthz() -> JSONResponse:
        broken = registry.broken()
        body: dict[str, Any] = {"status": "alive"}
        if state.cluster is not None:
            workers = [w for w in read_workers(state.cluster) if w.index != state.cluster.index]
            broken.update({f"{name} (worker {w.index})": why for w in workers if w.status
                           for name, why in w.status.get("broken", {}).items()})
            stuck = {str(w.index): w.reason() for w in workers if w.stuck}
            if stuck:
                body = {"status": "stuck", "workers": stuck}
        if broken:
            body = {**body, "status": "broken", "models": broken}
        return JSONResponse(body, status_code=200 if body["status"] == "alive" else 503)

    @router.get("/readyz", summary="Readiness: 200 once every model is loaded and warmed (in "
                "every worker)")
    async def readyz() -> JSONResponse:
        ready, workers = readiness(state)
        body: dict[str, Any] = {
            "ready": ready,
            "draining": state.draining,
            "models": {m.config.name: shown.status(m) for m in registry},
        }
        if workers is not None:
            body["workers"] = workers
        return JSONResponse(body, status_code=200 if ready else 503)

    @router.get("/metrics", summary="Prometheus metrics (text format): the whole server's, whichever "
                "worker answers; ?per_worker=true labels each worker's own series worker=\"<index>\"")
    async def metrics(per_worker: bool = False) -> Response:
        body, media_type = await scrape_metrics(state, per_worker=per_worker)
        return Response(body, media_type=media_type)


def readiness(state: AppState) -> tuple[bool, dict[str, str] | None]:
    """The server's readiness as ``/readyz`` (and gRPC's health service) answer it: this
    process's (``AppState.is_ready``) and, with worker processes, every other worker's as its
    status file last said (``None`` without workers; else each one's reason, or ``ready``)."""
    ready = state.is_ready()
    if state.cluster is None:
        return ready, None
    workers = {w.index: w for w in read_workers(state.cluster)}
    workers.pop(state.cluster.index)  # this one's own state is live, not its last file
    return (ready and all(w.ready for w in workers.values()),
            {str(i): w.reason() or "ready" for i, w in sorted(workers.items())})


def _model_info(model: ServedModel, shown: PublicPaths) -> dict[str, Any]:
    config = model.config.model_dump(mode="json")
    config["path"] = shown.path(model.config.path)
    return {
        "name": model.config.name,
        **shown.status(model),
        "config": config,
        "queued_rows": model.batcher.queued_rows,
        "input_kind": model.backend.input_kind,
        **model.backend.describe(),
    }
