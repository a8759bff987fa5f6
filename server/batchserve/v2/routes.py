"""Open Inference Protocol (KServe v2) over REST, for standard clients (Triton's, KServe's).

Rows from ``/v2/models/{name}/infer`` join the same per-model batcher as ``/predict``'s. Errors
are ``{"error": "message"}`` as the protocol says; readiness endpoints answer 503 when not ready.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

import batchserve
from batchserve.bodies import read_body
from batchserve.errors import BatchserveError, ModelVersionNotFound, ShuttingDown
from batchserve.registry import ServedModel
from batchserve.routes import RequestHeaders, require_ready, run_items
from batchserve.state import AppState
from batchserve.v2.tensors import HEADER_LENGTH, encode_response, parse_infer

VERSION = "1"
_INFER_DOC: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"}, "parameters": {"type": "object"},
        "inputs": {"type": "array", "items": {"type": "object"}},
        "outputs": {"type": "array", "items": {"type": "object"}}}}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"},
                                 "description": "JSON header + binary tensor data "
                                                "(Inference-Header-Content-Length)"}}}}


def v2_error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def add_v2_routes(router: APIRouter, state: AppState) -> None:
    registry = state.registry

    def lookup(name: str, version: str | None) -> ServedModel:
        model = registry.get(name)
        if version is not None and version != VERSION:
            raise ModelVersionNotFound(f"model '{name}' has version {VERSION} only, not {version!r}")
        return model

    @router.get("/v2", tags=["v2"], summary="Server metadata")
    async def server_metadata() -> dict[str, Any]:
        return {"name": "batchserve", "version": batchserve.__version__,
                "extensions": ["binary_tensor_data"]}

    @router.get("/v2/health/live", tags=["v2"], summary="Server liveness (503 when a model's "
                "batching loop stopped: restart the process)")
    async def live() -> JSONResponse:
        is_live = not registry.broken()
        return JSONResponse({"live": is_live}, status_code=200 if is_live else 503)

    @router.get("/v2/health/ready", tags=["v2"], summary="Server readiness (503 until ready)")
    async def ready() -> JSONResponse:
        is_ready = registry.ready and not state.draining
        return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)

    @router.get("/v2/models/{name}", tags=["v2"], summary="Model metadata")
    @router.get("/v2/models/{name}/versions/{version}", tags=["v2"], summary="Model metadata")
    async def model_metadata(name: str, version: str | None = None) -> Response:
        try:
            model = lookup(name, version)
            metadata = model.backend.v2_metadata() if model.state == "ready" else {"inputs": [],
                                                                                   "outputs": []}
        except BatchserveError as exc:
            return v2_error(exc.status, exc.message)
        return JSONResponse({"name": name, "versions": [VERSION],
                             "platform": f"batchserve_{model.config.backend}", **metadata})

    @router.get("/v2/models/{name}/ready", tags=["v2"], summary="Model readiness (503 if not)")
    @router.get("/v2/models/{name}/versions/{version}/ready", tags=["v2"], summary="Model readiness")
    async def model_ready(name: str, version: str | None = None) -> Response:
        try:
            model = lookup(name, version)
        except BatchserveError as exc:
            return v2_error(exc.status, exc.message)
        is_ready = model.ready and not state.draining
        return JSONResponse({"name": name, "ready": is_ready}, status_code=200 if is_ready else 503)

    @router.post("/v2/models/{name}/infer", tags=["v2"], summary="Inference",
                 openapi_extra=_INFER_DOC)
    @router.post("/v2/models/{name}/versions/{version}/infer", tags=["v2"], summary="Inference",
                 openapi_extra=_INFER_DOC)
    async def infer(name: str, request: Request, version: str | None = None) -> Response:
        started = time.perf_counter()
        model: ServedModel | None = None
        try:
            if state.draining:
                raise ShuttingDown("server is shutting down")
            model = lookup(name, version)
            require_ready(model)
            headers = RequestHeaders(request.scope["headers"])
            body = await read_body(request.receive, headers.content_length,
                                   limit=state.settings.max_body_bytes, budget=state.bodies,
                                   deadline_s=time.monotonic() + model.config.timeout_ms / 1000.0)
            parsed = parse_infer(body, headers.header_length, max_items=state.settings.max_items)
            items = model.backend.items_from_v2(parsed.inputs)
            outputs = await run_items(state, model, items, parsed.parameters, headers, request.receive)
            content, json_length = encode_response(name, parsed, model.backend.outputs_to_v2(outputs))
        except BatchserveError as exc:
            if model is not None:
                model.metrics.count_request(exc.status)
            return v2_error(exc.status, exc.message, exc.headers)
        model.metrics.count_request(200)
        model.metrics.request_duration.observe(time.perf_counter() - started)
        if json_length is None:
            return Response(content, media_type="application/json")
        return Response(content, media_type="application/octet-stream",
                        headers={HEADER_LENGTH: str(json_length)})
