"""OpenAI-compatible embeddings, for the clients RAG code calls (the ``openai`` package,
LangChain's ``OpenAIEmbeddings``, LlamaIndex): ``POST /v1/embeddings``, ``GET /v1/models``.

An adapter over the shared request path (``batchserve/pipeline.py``): its rows join the same
batcher as ``/predict``'s and v2's. ``input`` is a string, an array of strings, an array of token
ids or an array of such arrays (the model's own token ids: they are not OpenAI's tiktoken ids);
``encoding_format`` ``float`` or ``base64`` (little-endian float32, which the official client
asks for by default); ``dimensions`` the full size or one the model allows (the embedding
backend's ``options.dimensions``); ``usage`` counts the tokens the model read, special tokens
included; ``/v1/models`` lists the models ``/v1/embeddings`` serves, and only those. Errors are
OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, with
batchserve's status codes; ``code`` is batchserve's error type. A model is served here when its
backend is a ``SentenceEmbedder`` (``backends/kinds.py``), whatever its class.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request, Response

from batchserve.backends.kinds import Embedding, SentenceEmbedder
from batchserve.errors import (
    BatchserveError,
    InvalidInput,
    MalformedRequest,
    ModelNotFound,
    UnsupportedMediaType,
)
from batchserve.headers import RequestHeaders
from batchserve.lifecycle import Adapter, Call, Decoded
from batchserve.pipeline import OFFLOAD_BYTES, Pipeline
from batchserve.predict import json_object
from batchserve.registry import ModelRegistry, ServedModel

FORMATS = ("float", "base64")
_FIELDS = {"model", "input", "encoding_format", "dimensions", "user"}
_INPUT_FORM = "a string, an array of strings, an array of token ids, or an array of such arrays"
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data", "text/plain")
"""What an HTML form on another site can send without a CORS preflight: never read here."""
_EMBEDDINGS_DOC: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object", "required": ["model", "input"], "properties": {
        "model": {"type": "string"},
        "input": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}},
                            {"type": "array", "items": {"type": "integer"}},
                            {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}}]},
        "encoding_format": {"type": "string", "enum": list(FORMATS), "default": "float"},
        "dimensions": {"type": "integer", "minimum": 1},
        "user": {"type": "string"}}}}}}}


def openai_error(exc: BatchserveError) -> Response:
    """``exc`` in OpenAI's error shape, with its status and headers (Retry-After)."""
    kind = "invalid_request_error" if exc.status < 500 else "server_error"
    message = exc.message
    param = next((p for p in ("dimensions", "encoding_format", "model", "input") if message.startswith(p)),
                 "input" if message.startswith("item ") else None)
    body = {"error": {"message": message, "type": kind, "param": param, "code": exc.type}}
    return Response(orjson.dumps(body), status_code=exc.status, headers=exc.headers,
                    media_type="application/json")


class EmbeddingsAdapter(Adapter):
    protocol = "openai"

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    def check(self, headers: RequestHeaders, model: str | None) -> None:
        if headers.content_type in _FORM_TYPES:
            raise UnsupportedMediaType(f"{headers.content_type!r} bodies are not accepted (an HTML "
                                       "form on any site can send them); send application/json")

    def decodes_on_loop(self, headers: RequestHeaders, size: int) -> bool:
        return size <= OFFLOAD_BYTES

    def decode(self, body: bytes, call: Call) -> Decoded:
        decoded = parse_embeddings(body)
        assert decoded.model is not None
        backend = self.registry.get(decoded.model).backend  # 404 for an unknown model
        if not is_embedder(backend):
            raise InvalidInput(f"model '{decoded.model}' is not an embedding model (its backend is "
                               f"{backend.config.backend}); /v1/embeddings serves embedding models")
        return decoded

    def encode(self, model: ServedModel, decoded: Decoded, outputs: list[Any]) -> Response:
        as_base64 = decoded.context == "base64"
        data = [{"object": "embedding", "index": index,
                 "embedding": base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
                 if as_base64 else vector}
                for index, vector in enumerate(outputs)]
        tokens = sum(vector.tokens for vector in outputs if isinstance(vector, Embedding))
        body = {"object": "list", "data": data, "model": model.config.name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        return Response(orjson.dumps(body), media_type="application/json")

    def error(self, exc: BatchserveError) -> Response:
        return openai_error(exc)


def is_embedder(backend: object) -> bool:
    """Whether a backend is served here: its kind, never its class (``backends/kinds.py``)."""
    return issubclass(type(backend), SentenceEmbedder)


def parse_embeddings(body: bytes) -> Decoded:
    """An embeddings request as items (texts, or ``{"tokens": ids}``) and parameters
    (``dimensions``); the context is the ``encoding_format``."""
    payload = json_object(body)
    unknown = payload.keys() - _FIELDS
    if unknown:
        raise MalformedRequest(f"unknown fields {sorted(unknown)}; expected {sorted(_FIELDS)}")
    name = payload.get("model")
    if not isinstance(name, str):
        raise MalformedRequest("field 'model' is required and must be a string")
    encoding = payload.get("encoding_format") or "float"
    if encoding not in FORMATS:
        raise InvalidInput(f"encoding_format {encoding!r:.40} is not supported; use 'float' or 'base64'")
    parameters: dict[str, Any] = {}
    dimensions = payload.get("dimensions")
    if dimensions is not None:
        if not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1:
            raise InvalidInput(f"dimensions must be a positive integer, got {dimensions!r:.40}")
        parameters["dimensions"] = dimensions
    return Decoded(_items(payload.get("input")), parameters, name, context=encoding)


def _items(value: Any) -> list[Any]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise MalformedRequest(f"field 'input' is required and must be {_INPUT_FORM}")
    if not value:
        raise InvalidInput("input is an empty array; send at least one text")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return [{"tokens": value}]  # one text as token ids
    items: list[Any] = []
    for index, element in enumerate(value):
        if isinstance(element, str):
            items.append(element)
        elif isinstance(element, list):
            items.append({"tokens": element})
        else:
            raise InvalidInput(f"item {index}: expected a string or an array of token ids, got "
                               f"{type(element).__name__}")
    return items


def add_openai_routes(router: APIRouter, pipeline: Pipeline) -> None:
    registry = pipeline.state.registry
    adapter = EmbeddingsAdapter(registry)
    created = int(time.time())

    def card(model: ServedModel) -> dict[str, Any]:
        return {"id": model.config.name, "object": "model", "created": created,
                "owned_by": "batchserve"}

    @router.post("/v1/embeddings", tags=["openai"], openapi_extra=_EMBEDDINGS_DOC,
                 summary="Embeddings (OpenAI-compatible)")
    async def embeddings(request: Request) -> Response:
        return await pipeline.serve(adapter, request.scope, request.receive, None)

    @router.get("/v1/models", tags=["openai"], summary="The embedding models (OpenAI-compatible)")
    async def list_models() -> Response:
        embedders = {m.config.name: m for m in registry if is_embedder(m.backend)}  # once a name
        cards = [card(m) for m in embedders.values()]  # what /v1/embeddings serves
        return Response(orjson.dumps({"object": "list", "data": cards}), media_type="application/json")

    @router.get("/v1/models/{name}", tags=["openai"], summary="One embedding model (OpenAI-compatible)")
    async def get_model(name: str) -> Response:
        try:
            model = registry.get(name)
            if not is_embedder(model.backend):
                raise ModelNotFound(f"model '{name}' is not an embedding model (its backend is "
                                    f"{model.config.backend}); /v1 serves embedding models only")
            return Response(orjson.dumps(card(model)), media_type="application/json")
        except BatchserveError as exc:
            return openai_error(exc)
