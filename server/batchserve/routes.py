"""HTTP routes. ``/predict`` is the hot path; everything else is for operators."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive

from batchserve.backends.base import Backend
from batchserve.bodies import read_body
from batchserve.errors import (
    BatchserveError,
    InvalidInput,
    MalformedRequest,
    ModelNotReady,
    ShuttingDown,
    TooManyItems,
    UnsupportedMediaType,
)
from batchserve.registry import ServedModel
from batchserve.schemas import ERROR_RESPONSES, PredictRequest, PredictResponse
from batchserve.state import AppState

log = logging.getLogger(__name__)

TIMEOUT_HEADER = b"x-request-timeout-ms"
_JSON_TYPES = ("", "application/json", "application/x-www-form-urlencoded")  # curl -d sends the last
_TIMEOUT_DOC = {
    "name": "X-Request-Timeout-Ms", "in": "header", "required": False,
    "schema": {"type": "number", "exclusiveMinimum": 0},
    "description": "Lower this request's deadline below the model's timeout_ms.",
}
_PREDICT_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": PredictRequest.model_json_schema()}},
    },
    "parameters": [_TIMEOUT_DOC],
}
_PREDICT_PATH_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": PredictRequest.model_json_schema()},
            "image/*": {"schema": {"type": "string", "format": "binary"},
                        "description": "One raw image (image backends); parameters as query."},
            "multipart/form-data": {
                "schema": {"type": "object", "additionalProperties":
                           {"type": "string", "format": "binary"}},
                "description": "One or more files (image backends); parameters as query."},
        },
    },
    "parameters": [_TIMEOUT_DOC],
}


def add_routes(router: APIRouter, state: AppState) -> None:
    """Register the routes on the app's own router.

    The two /predict routes are what the OpenAPI document shows; requests to them are
    normally served by ``server/fastpath.py`` before routing, with the same handler.
    """
    registry = state.registry

    @router.post("/predict", response_model=PredictResponse, responses=ERROR_RESPONSES,
                 openapi_extra=_PREDICT_DOC, summary="Predict with the model named in the body")
    async def predict_named_in_body(request: Request) -> Response:
        return await predict(state, request, None)

    @router.post("/predict/{model}", response_model=PredictResponse, responses=ERROR_RESPONSES,
                 openapi_extra=_PREDICT_PATH_DOC, summary="Predict with the model named in the path")
    async def predict_named_in_path(model: str, request: Request) -> Response:
        return await predict(state, request, model)

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

    @router.get("/metrics", summary="Prometheus metrics (text format)")
    async def metrics() -> Response:
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def predict(state: AppState, request: Request, path_model: str | None) -> Response:
    """The /predict handler; ``server/fastpath.py`` serves it ahead of the framework's routing."""
    started = time.perf_counter()
    model: ServedModel | None = None
    try:
        if state.draining:
            raise ShuttingDown("server is shutting down")
        headers = RequestHeaders(request.scope["headers"])
        body = await read_body(request.receive, headers.content_length, limit=state.settings.max_body_bytes,
                               deadline_s=body_deadline_s(state, path_model), budget=state.bodies)
        if headers.content_type in _JSON_TYPES or headers.content_type.endswith("+json"):
            name, items, parameters = _parse_predict(body, path_model)
            model = state.registry.get(name)
            require_ready(model)
        elif path_model is None:
            raise UnsupportedMediaType(f"/predict takes application/json; send {headers.content_type!r} "
                                       "bodies to /predict/{model}")
        else:
            model = state.registry.get(path_model)
            require_ready(model)
            items = await run_in_threadpool(model.backend.decode_body, headers.content_type_raw, body)
            parameters = dict(request.query_params)
        outputs = await run_items(state, model, items, parameters, headers, request.receive)
    except BatchserveError as exc:
        if model is not None:
            model.metrics.count_request(exc.status)
        raise
    model.metrics.count_request(200)
    model.metrics.request_duration.observe(time.perf_counter() - started)
    return Response(orjson.dumps({"model": model.config.name, "outputs": outputs}),
                    media_type="application/json")


async def run_items(state: AppState, model: ServedModel, items: list[Any], parameters: Mapping[str, Any],
                    headers: RequestHeaders, receive: Receive, deadline_s: float | None = None) -> list[Any]:
    """Validate and preprocess ``items``, run them through the model's batcher, return the outputs.

    Every protocol (/predict, v2) ends here, so their rows share one batcher per model.
    """
    if len(items) > state.settings.max_items:
        raise TooManyItems(f"request has {len(items)} items; at most {state.settings.max_items} "
                           "per request (BATCHSERVE_MAX_ITEMS)")
    if deadline_s is None:
        deadline_s = time.monotonic() + _timeout_s(headers.timeout_ms, model)
    # Admitted (or refused, 503) before preprocessing: don't decode what the queue would refuse.
    # A request that found a version being swapped out by a reload is admitted by the new one.
    model = state.registry.admit(model, len(items), deadline_s)
    backend = model.backend
    parsed = backend.parse_parameters(parameters)
    if backend.preprocess_in_thread:
        rows = await run_in_threadpool(_preprocess, backend, items, parsed)
    else:
        rows = _preprocess(backend, items, parsed)
    current = state.registry.current(model) if model.batcher.closing else None
    if current is not None and not state.draining:
        # Reloaded (management API) while this request was being preprocessed: the new model
        # preprocesses and serves it, rather than a 503.
        return await run_items(state, current, items, parameters, headers, receive, deadline_s)
    return await model.batcher.infer(rows, timeout_s=max(deadline_s - time.monotonic(), 0.0),
                                     deadline_s=deadline_s, disconnected=_disconnect_waiter(receive))


class RequestHeaders:
    """The request headers the inference routes read, found in one pass over the raw list."""

    __slots__ = ("content_length", "content_type", "content_type_raw", "header_length", "timeout_ms")

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self.content_length: bytes | None = None
        self.content_type = ""  # the media type, lower case, without parameters
        self.content_type_raw = ""  # with parameters (a multipart boundary, say)
        self.timeout_ms: bytes | None = None
        self.header_length: bytes | None = None  # v2's Inference-Header-Content-Length
        for key, value in raw:  # ASGI servers give lower-case names
            if key == b"content-type":
                self.content_type_raw = value.decode("latin-1")
                self.content_type = self.content_type_raw.partition(";")[0].strip().lower()
            elif key == b"content-length":
                self.content_length = value
            elif key == TIMEOUT_HEADER:
                self.timeout_ms = value
            elif key == b"inference-header-content-length":
                self.header_length = value


def body_deadline_s(state: AppState, name: str | None) -> float:
    """When reading the body must end: the named model's timeout_ms from now (the longest of
    all the models' while the body itself names the model)."""
    if name is not None:
        timeout_ms = state.registry.get(name).config.timeout_ms
    else:
        timeout_ms = max((m.config.timeout_ms for m in state.registry), default=10_000.0)
    return time.monotonic() + timeout_ms / 1000.0


def _parse_predict(body: bytes, path_model: str | None) -> tuple[str, list[Any], dict[str, Any]]:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedRequest(f"body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise MalformedRequest(f"body must be a JSON object, got {type(payload).__name__}")
    unknown = payload.keys() - {"model", "inputs", "parameters"}
    if unknown:
        raise MalformedRequest(f"unknown fields {sorted(unknown)}; expected model, inputs, parameters")
    name = payload.get("model", path_model)
    if path_model is not None and name != path_model:
        raise MalformedRequest(f"body names model {name!r:.80} but the path names {path_model!r}")
    if not isinstance(name, str):
        raise MalformedRequest("field 'model' is required and must be a string")
    items = payload.get("inputs")
    if not isinstance(items, list) or not items:
        raise MalformedRequest("field 'inputs' is required and must be a non-empty list of items")
    parameters = payload.get("parameters", {})
    if not isinstance(parameters, dict):
        raise MalformedRequest("field 'parameters' must be an object")
    return name, items, parameters


def require_ready(model: ServedModel) -> None:
    if not model.ready:
        status = model.status()
        raise ModelNotReady(f"model '{model.config.name}' is {status['state']}"
                            + (f": {status['reason']}" if status["reason"] else ""))


def _preprocess(backend: Backend, items: list[Any], parameters: Any) -> list[Any]:
    try:
        items = backend.check_items(items, parameters)  # the request as a whole, before any item
    except InvalidInput:
        raise
    except Exception as exc:  # whatever a client sends is a 4xx, never a 5xx
        log.warning("model %s: check_items raised", backend.config.name, exc_info=True)
        raise InvalidInput(f"the request's items could not be read ({type(exc).__name__})") from None
    rows = []
    for index, item in enumerate(items):
        try:
            rows.append(backend.preprocess(item, parameters))
        except InvalidInput as exc:
            raise InvalidInput(f"item {index}: {exc.message}") from None
        except Exception as exc:  # whatever a client sends is a 4xx, never a 5xx
            log.warning("model %s: preprocess raised on item %d", backend.config.name, index,
                        exc_info=True)
            raise InvalidInput(f"item {index}: could not be read ({type(exc).__name__})") from None
    return rows


def _timeout_s(header: bytes | None, model: ServedModel) -> float:
    timeout_ms = model.config.timeout_ms
    if header is not None:
        try:
            requested = float(header)
        except ValueError:
            requested = float("nan")
        if not requested > 0:
            raise MalformedRequest(f"header X-Request-Timeout-Ms must be a positive number, "
                                   f"got {header.decode('latin-1')!r:.40}")
        timeout_ms = min(timeout_ms, requested)
    return timeout_ms / 1000.0


def _disconnect_waiter(receive: Receive) -> Callable[[], Coroutine[Any, Any, None]]:
    async def wait() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
    return wait


def _model_info(model: ServedModel) -> dict[str, Any]:
    config = model.config.model_dump(mode="json")
    return {
        "name": model.config.name,
        **model.status(),
        "config": config,
        "queued_rows": model.batcher.queued_rows,
        **model.backend.describe(),
    }
