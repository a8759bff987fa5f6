"""Open Inference Protocol (KServe v2) over REST, for standard clients (Triton's, KServe's).

Rows from ``/v2/models/{name}/infer`` join the same per-model batcher as ``/predict``'s. Errors
are ``{"error": "message"}`` as the protocol says (the app's error handlers give every ``/v2``
path that shape); readiness endpoints answer 503 when not ready. Triton's model configuration
and statistics extensions too (``model_config.py``, ``stats.py``).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

import batchserve
from batchserve.errors import BatchserveError, UnsupportedMediaType
from batchserve.headers import RequestHeaders
from batchserve.lifecycle import Adapter, Call, Decoded
from batchserve.metrics_multiprocess import read_metrics
from batchserve.pipeline import Pipeline
from batchserve.registry import ServedModel
from batchserve.responses import JSONBytes
from batchserve.routing import UNVERSIONED
from batchserve.state import AppState
from batchserve.v2.codec import Metadata, codec_for
from batchserve.v2.model_config import model_config
from batchserve.v2.stats import model_stats
from batchserve.v2.tensors import HEADER_LENGTH, InferRequest, encode_response, parse_infer

VERSION = UNVERSIONED
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


V2_OFFLOAD_BYTES = 16 * 1024
"""v2 bodies larger than this are decoded on a worker thread: decoding tensors costs ~100-300 ns
per element (benchmarks/v2_parse_cost.py), so 16 KiB is about the event loop's 1 ms."""
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data", "text/plain")
"""What an HTML form on another site can send without a CORS preflight: never an infer request."""


class V2Adapter(Adapter):
    """Tensors in, tensors out, through the model's codec (``batchserve/v2/codec.py``). A body
    is JSON, optionally followed by binary tensor data, whatever its Content-Type (Triton's
    client sends none), except the types of an HTML form."""

    protocol = "v2"

    def __init__(self, max_items: int) -> None:
        self.max_items = max_items

    def check(self, headers: RequestHeaders, model: str | None) -> None:
        if headers.content_type in _FORM_TYPES:
            raise UnsupportedMediaType(f"{headers.content_type!r} bodies are not accepted (an HTML "
                                       "form on any site can send them); send application/json or "
                                       "application/octet-stream")

    def decodes_on_loop(self, headers: RequestHeaders, size: int) -> bool:
        return size <= V2_OFFLOAD_BYTES

    def decode(self, body: bytes, call: Call) -> Decoded:
        model = call.model
        assert model is not None  # the path names the model
        request = parse_infer(body, call.headers.header_length, max_items=self.max_items)
        codec = codec_for(model.backend)
        codec.check_names(model.backend, request.inputs)
        return Decoded(codec.items(model.backend, request.inputs), request.parameters, context=request)

    def encode(self, model: ServedModel, decoded: Decoded, outputs: list[Any]) -> Response:
        request: InferRequest = decoded.context
        tensors = codec_for(model.backend).outputs(model.backend, outputs)
        content, json_length = encode_response(model.config.name, request, tensors,
                                               model.config.version or UNVERSIONED)
        if json_length is None:
            return JSONBytes(content)
        return Response(content, media_type="application/octet-stream",
                        headers={HEADER_LENGTH: str(json_length)})

    def error(self, exc: BatchserveError) -> Response:
        return v2_error(exc.status, exc.message, exc.headers)


def tensors(model: ServedModel) -> Metadata:
    """``model``'s input and output tensors (empty lists while it is not loaded)."""
    if model.state != "ready":
        return {"inputs": [], "outputs": []}
    return codec_for(model.backend).metadata(model.backend)


def platform(model: ServedModel) -> str:
    """``model``'s platform, as the protocol's metadata names it."""
    return f"batchserve_{model.config.backend}"


def lookup_version(state: AppState, name: str, version: str | None) -> ServedModel:
    """``name``'s ``version`` (its latest when none is named), for the metadata, config, stats
    and readiness of REST and gRPC alike; 404 naming the versions there are."""
    if version is None:
        return state.registry.get(name)
    return state.router.resolve(name, version, None)


def versions_of(state: AppState, name: str) -> list[str]:
    """The versions of ``name`` that are served: its declared ones, or the one, "1"."""
    return [m.config.version or VERSION for m in state.registry.versions(name)] or [VERSION]


def add_v2_routes(router: APIRouter, pipeline: Pipeline) -> V2Adapter:
    """Register the v2 routes; the adapter they serve inference with (the fast path's too)."""
    state = pipeline.state
    registry = state.registry
    adapter = V2Adapter(state.settings.max_items)

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
        is_ready = state.is_ready()
        return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)

    # before /v2/models/{name}, which would take "stats" for a model's name
    @router.get("/v2/models/stats", tags=["v2"], summary="Every model's statistics (Triton's extension)")
    async def every_model_stats() -> dict[str, Any]:
        names = list(dict.fromkeys(m.config.name for m in registry))  # once a model
        return {"model_stats": model_stats(await read_metrics(state), names, VERSION)}

    @router.get("/v2/models/{name}", tags=["v2"], summary="Model metadata")
    @router.get("/v2/models/{name}/versions/{version}", tags=["v2"], summary="Model metadata")
    async def model_metadata(name: str, version: str | None = None) -> Response:
        model = lookup_version(state, name, version)
        return JSONResponse({"name": name, "versions": versions_of(state, name), "platform": platform(model),
                             **tensors(model)})

    @router.get("/v2/models/{name}/config", tags=["v2"], summary="Model configuration (Triton's)")
    @router.get("/v2/models/{name}/versions/{version}/config", tags=["v2"],
                summary="Model configuration (Triton's)")
    async def get_model_config(name: str, version: str | None = None) -> dict[str, Any]:
        model = lookup_version(state, name, version)
        return model_config(model, tensors(model), platform(model))

    @router.get("/v2/models/{name}/stats", tags=["v2"], summary="Model statistics (Triton's extension)")
    @router.get("/v2/models/{name}/versions/{version}/stats", tags=["v2"],
                summary="Model statistics (Triton's extension)")
    async def get_model_stats(name: str, version: str | None = None) -> dict[str, Any]:
        model = lookup_version(state, name, version)
        shown = VERSION if version is None else model.config.version or VERSION
        return {"model_stats": model_stats(await read_metrics(state), [name], shown,
                                           version if model.config.version else None)}

    @router.get("/v2/models/{name}/ready", tags=["v2"], summary="Model readiness (503 if not)")
    @router.get("/v2/models/{name}/versions/{version}/ready", tags=["v2"], summary="Model readiness")
    async def model_ready(name: str, version: str | None = None) -> Response:
        model = lookup_version(state, name, version)
        is_ready = model.ready and not state.draining
        return JSONResponse({"name": name, "ready": is_ready}, status_code=200 if is_ready else 503)

    @router.post("/v2/models/{name}/infer", tags=["v2"], summary="Inference",
                 openapi_extra=_INFER_DOC)
    @router.post("/v2/models/{name}/versions/{version}/infer", tags=["v2"], summary="Inference",
                 openapi_extra=_INFER_DOC)
    async def infer(name: str, request: Request, version: str | None = None) -> Response:
        return await pipeline.serve(adapter, request.scope, request.receive, name, version)

    return adapter
