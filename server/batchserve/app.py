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
from starlette.routing import Match

import batchserve
from batchserve.cluster.rundir import Cluster
from batchserve.cluster.status import keep_writing_status, write_status_quietly
from batchserve.config import ModelConfig
from batchserve.docs import add_docs
from batchserve.errors import BatchserveError, describe_validation_errors
from batchserve.fastpath import BatchserveApp, FastPath
from batchserve.management import add_management_routes
from batchserve.metrics import Metrics
from batchserve.metrics_multiprocess import start_refreshing
from batchserve.openai_api import add_openai_routes
from batchserve.pipeline import Pipeline
from batchserve.predict import PREDICT, add_predict_routes
from batchserve.registry import ModelRegistry
from batchserve.responses import error_response
from batchserve.routes import add_routes
from batchserve.settings import ServerSettings
from batchserve.state import AppState
from batchserve.v2.routes import add_v2_routes

log = logging.getLogger(__name__)


def create_app(settings: ServerSettings, configs: list[ModelConfig], *,
               cluster: Cluster | None = None, unloaded: list[ModelConfig] | None = None) -> FastAPI:
    """The app of a server, or of one of its workers (``cluster``; ``unloaded``: the models
    management unloaded before this worker started, ``desired.apply_desired``)."""
    metrics = Metrics(max_batch_size=max((c.max_batch_size for c in configs), default=1))
    tracing = None
    if settings.tracing:  # OpenTelemetry is imported only now: an extra, and off by default
        from batchserve.tracing import setup_tracing

        tracing = setup_tracing(metrics.trace_spans_dropped, None if cluster is None else cluster.index)
    registry = ModelRegistry(configs, metrics, unloaded=unloaded, tracing=tracing)
    state = AppState(settings=settings, registry=registry, metrics=metrics, cluster=cluster,
                     tracing=tracing)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Models load in the background so /healthz answers at once; /readyz says when done.
        loading = asyncio.create_task(state.registry.load_all(), name="load-models")
        status = None
        if cluster is not None:  # the other workers read this one's state from its file
            state.registry.on_ready = lambda: write_status_quietly(state)
            status = asyncio.create_task(keep_writing_status(state), name="worker-status")
        refreshing = start_refreshing(state.metrics)  # a worker's state gauges, into its files
        try:
            yield
        finally:
            state.begin_drain()  # already begun on SIGTERM; its deadline stands
            if not loading.done():
                await asyncio.wait({loading}, timeout=state.drain_left_s())
            await state.shadows.close()  # copies answer no one: they don't hold the drain
            await state.registry.close(state.drain_left_s())
            for task in (status, refreshing):  # the others see this worker draining until here
                if task is not None:
                    task.cancel()
            if tracing is not None:  # the spans still queued go out (a thread: off the loop)
                await asyncio.to_thread(tracing.shutdown)

    app = BatchserveApp(
        title="batchserve",
        version=batchserve.__version__,
        description="Model inference with dynamic batching.",
        lifespan=lifespan,
        docs_url=None,  # add_docs serves them, with their assets from this server, not a CDN
        redoc_url=None,
        redirect_slashes=False,  # a 404 that says why (_http_error), not an empty 307 a POST loses
    )
    add_docs(app)
    app.state.batchserve = state
    pipeline = Pipeline(state)
    add_predict_routes(app.router, pipeline)
    add_routes(app.router, state)
    v2 = add_v2_routes(app.router, pipeline)
    add_openai_routes(app.router, pipeline)
    if settings.management_port is None:
        add_management_routes(app.router, state)
    app.fast_path = FastPath(pipeline, PREDICT, v2)
    _add_error_handlers(app)
    return app


def create_management_app(state: AppState) -> FastAPI:
    """The management API alone, for its own port (``--management-port``), over the same state
    as the app ``create_app`` built; that app's lifespan loads and closes the models."""
    app = FastAPI(title="batchserve management", version=batchserve.__version__,
                  docs_url=None, redoc_url=None, openapi_url=None, redirect_slashes=False)
    add_management_routes(app.router, state)
    _add_error_handlers(app)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(BatchserveError, _batchserve_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected_error)


async def _batchserve_error(request: Request, exc: BatchserveError) -> JSONResponse:
    return error_response(exc.status, exc.type, exc.message, exc.headers, path=request.url.path)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(422, "malformed_request", describe_validation_errors(exc.errors()),
                          path=request.url.path)


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    path = request.url.path
    message = str(exc.detail)
    if exc.status_code == 404 and _is_routed(request, path.rstrip("/")):
        message = (f"no route {request.method} {path}: paths take no trailing slash; send it to "
                   f"{path.rstrip('/')}")
    return error_response(exc.status_code, kind, message, exc.headers, path=path)


def _is_routed(request: Request, path: str) -> bool:
    """Whether a route of the app takes ``path`` (for any method): a path that differs from one
    by a trailing slash gets a 404 that says so, where Starlette would redirect (307)."""
    if not path or path == request.url.path:
        return False
    scope = {**request.scope, "path": path}
    return any(route.matches(scope)[0] is not Match.NONE for route in request.app.router.routes)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "internal error; see the server log",
                          path=request.url.path)
