"""Builds the FastAPI application from explicit settings and model configs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

import batchserve
from batchserve.config import ModelConfig
from batchserve.errors import BatchserveError
from batchserve.fastpath import PredictFastPath
from batchserve.management import add_management_routes
from batchserve.metrics import Metrics
from batchserve.pipeline import Pipeline
from batchserve.predict import add_predict_routes
from batchserve.registry import ModelRegistry
from batchserve.responses import error_response
from batchserve.routes import add_routes
from batchserve.settings import ServerSettings
from batchserve.state import AppState
from batchserve.v2.routes import add_v2_routes

log = logging.getLogger(__name__)


def create_app(settings: ServerSettings, configs: list[ModelConfig]) -> FastAPI:
    metrics = Metrics(max_batch_size=max((c.max_batch_size for c in configs), default=1))
    state = AppState(settings=settings, registry=ModelRegistry(configs, metrics), metrics=metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Models load in the background so /healthz answers at once; /readyz says when done.
        loading = asyncio.create_task(state.registry.load_all(), name="load-models")
        try:
            yield
        finally:
            state.draining = True
            if not loading.done():
                await asyncio.wait({loading}, timeout=settings.shutdown_grace_s)
            await state.registry.close(settings.shutdown_grace_s)

    app = FastAPI(
        title="batchserve",
        version=batchserve.__version__,
        description="Model inference with dynamic batching.",
        lifespan=lifespan,
    )
    app.state.batchserve = state
    pipeline = Pipeline(state)
    add_predict_routes(app.router, pipeline)
    add_routes(app.router, state)
    add_v2_routes(app.router, pipeline)
    add_management_routes(app.router, state)
    app.add_middleware(PredictFastPath, pipeline=pipeline)
    app.add_exception_handler(BatchserveError, _batchserve_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected_error)
    return app


async def _batchserve_error(request: Request, exc: BatchserveError) -> JSONResponse:
    return error_response(exc.status, exc.type, exc.message, exc.headers)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
    return error_response(422, "malformed_request", problems)


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(exc.status_code, kind, str(exc.detail), exc.headers)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "internal error; see the server log")
