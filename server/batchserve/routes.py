"""Operator routes: health, readiness, the models and the metrics. Inference is served by the
protocol adapters over ``batchserve/pipeline.py`` (``/predict`` in ``batchserve/predict.py``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from batchserve.metrics_multiprocess import scrape_metrics
from batchserve.registry import ServedModel
from batchserve.schemas import ERROR_RESPONSES
from batchserve.state import AppState


def add_routes(router: APIRouter, state: AppState) -> None:
    """Register the operator routes on the app's own router."""
    registry = state.registry

    @router.get("/models", summary="Every configured model, its state and its I/O")
    async def list_models() -> dict[str, Any]:
        return {"models": [_model_info(m) for m in registry]}

    @router.get("/models/{name}", summary="One model, its state and its I/O",
                responses={404: ERROR_RESPONSES[404]})
    async def get_model(name: str) -> dict[str, Any]:
        return _model_info(registry.get(name))

    @router.get("/healthz", summary="Liveness: 200 while the process answers and no model's "
                "batching loop has stopped (503 names the broken ones: restart the process)")
    async def healthz() -> JSONResponse:
        broken = registry.broken()
        if broken:
            return JSONResponse({"status": "broken", "models": broken}, status_code=503)
        return JSONResponse({"status": "alive"})

    @router.get("/readyz", summary="Readiness: 200 once every model is loaded and warmed")
    async def readyz() -> JSONResponse:
        ready = registry.ready and not state.draining
        body = {
            "ready": ready,
            "draining": state.draining,
            "models": {m.config.name: m.status() for m in registry},
        }
        return JSONResponse(body, status_code=200 if ready else 503)

    @router.get("/metrics", summary="Prometheus metrics (text format): the whole server's, whichever "
                "worker answers; ?per_worker=true labels each worker's own series worker=\"<index>\"")
    async def metrics(per_worker: bool = False) -> Response:
        body, media_type = await scrape_metrics(state, per_worker=per_worker)
        return Response(body, media_type=media_type)


def _model_info(model: ServedModel) -> dict[str, Any]:
    config = model.config.model_dump(mode="json")
    return {
        "name": model.config.name,
        **model.status(),
        "config": config,
        "queued_rows": model.batcher.queued_rows,
        **model.backend.describe(),
    }
