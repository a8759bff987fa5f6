"""``POST /predict`` and ``POST /predict/{model}``: batchserve's own JSON protocol, an adapter
over the request's lifecycle (``batchserve/lifecycle.py``, ``batchserve/pipeline.py``).

A body is JSON (``application/json``, ``*+json``, or no ``Content-Type`` at all, for clients that
send none): ``{"model", "inputs", "parameters"}``. ``/predict/{model}`` also passes other media
types (an image upload) to the backend's ``decode_body``, with parameters in the query string.
``application/x-www-form-urlencoded`` and ``text/plain`` bodies are never read as JSON: a web page
on another site can send those without a CORS preflight. The answer is
``{"model", "outputs"}``; an error ``{"error": {"type", "message"}}``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import orjson
from fastapi import APIRouter, Request, Response

from batchserve.errors import BatchserveError, MalformedRequest, UnsupportedMediaType
from batchserve.headers import RequestHeaders
from batchserve.lifecycle import Adapter, Call, Decoded
from batchserve.pipeline import OFFLOAD_BYTES, Pipeline
from batchserve.registry import ServedModel
from batchserve.responses import JSONBytes, error_response
from batchserve.schemas import ERROR_RESPONSES, PredictRequest, PredictResponse

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


_NEVER_UPLOADS = ("application/x-www-form-urlencoded", "text/plain")
"""Media types an HTML form on another site can send without a CORS preflight. multipart/form-data
is one too, but it is how images are uploaded, and only a model that reads uploads takes it."""


def is_json(media_type: str) -> bool:
    """A media type (lower case, without parameters) read as JSON; none at all counts."""
    return media_type in ("", "application/json") or media_type.endswith("+json")


class PredictAdapter(Adapter):
    protocol = "predict"

    def check(self, headers: RequestHeaders, model: str | None) -> None:
        media_type = headers.content_type
        if media_type == "application/json":
            return
        if media_type in _NEVER_UPLOADS:
            raise UnsupportedMediaType(f"{media_type!r} bodies are not accepted (an HTML form on "
                                       "any site can send them); send application/json")
        if model is None and not is_json(media_type):
            raise UnsupportedMediaType(f"/predict takes application/json, not {media_type!r}; "
                                       "send other bodies (an image, say) to /predict/{model}")

    def decodes_on_loop(self, headers: RequestHeaders, size: int) -> bool:
        return is_json(headers.content_type) and size <= OFFLOAD_BYTES

    def decode(self, body: bytes, call: Call) -> Decoded:
        headers = call.headers
        if is_json(headers.content_type):
            return _parse_predict(body, call.name)
        model = call.model
        assert model is not None  # check() refused non-JSON bodies without a model in the path
        items = model.backend.decode_body(headers.content_type_raw, body)
        query = call.query.decode("latin-1")
        return Decoded(items, dict(parse_qsl(query, keep_blank_values=True)))

    def encode(self, model: ServedModel, decoded: Decoded, outputs: list[Any]) -> Response:
        return JSONBytes(orjson.dumps({"model": model.config.name, "outputs": outputs}))

    def error(self, exc: BatchserveError) -> Response:
        return error_response(exc.status, exc.type, exc.message, exc.headers)


PREDICT = PredictAdapter()


def add_predict_routes(router: APIRouter, pipeline: Pipeline) -> None:
    """The documented /predict routes; ``batchserve/fastpath.py`` serves their requests ahead of
    the framework's routing, through the same adapter."""

    @router.post("/predict", response_model=PredictResponse, responses=ERROR_RESPONSES,
                 openapi_extra=_PREDICT_DOC, summary="Predict with the model named in the body")
    async def predict_named_in_body(request: Request) -> Response:
        return await pipeline.serve(PREDICT, request.scope, request.receive, None)

    @router.post("/predict/{model}", response_model=PredictResponse, responses=ERROR_RESPONSES,
                 openapi_extra=_PREDICT_PATH_DOC, summary="Predict with the model named in the path")
    async def predict_named_in_path(model: str, request: Request) -> Response:
        return await pipeline.serve(PREDICT, request.scope, request.receive, model)

    @router.post("/predict/{model}/versions/{version}", response_model=PredictResponse,
                 responses=ERROR_RESPONSES, openapi_extra=_PREDICT_PATH_DOC,
                 summary="Predict with one version of the model named in the path")
    async def predict_version(model: str, version: str, request: Request) -> Response:
        return await pipeline.serve(PREDICT, request.scope, request.receive, model, version)


def json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object; 422 if it is not JSON, or not an object."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedRequest(f"body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise MalformedRequest(f"body must be a JSON object, got {type(payload).__name__}")
    return payload


def _parse_predict(body: bytes, path_model: str | None) -> Decoded:
    payload = json_object(body)
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
    return Decoded(items, parameters, name)
