"""Serves the inference routes ahead of FastAPI's middleware stack and routing, for an ASGI
host (a test client, or any ASGI server); over HTTP, ``rsgi.py`` hands them to the pipeline
itself, with ``FastPath.match``.

On a small model the per-request framework work, not the model, decides throughput: every
send of a response passes through each middleware layer, and FastAPI's outer layers (error
handling, its exception telemetry and body limit) run for every request. ``BatchserveApp`` is
the FastAPI app with one difference: a POST to ``/predict``, ``/predict/{model}`` or v2's
``/v2/models/{name}/infer`` (and their ``/versions/{v}`` forms) goes straight to the request
pipeline (``batchserve/pipeline.py``), which reads the body, answers every outcome, errors
included, and counts it; everything else goes through FastAPI as before. The OpenAPI
document still comes from the documented routes, which call the same pipeline.
Measured in benchmarks/README.md ("HTTP floor").
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from batchserve.lifecycle import Adapter
from batchserve.pipeline import Pipeline

_PREDICT = "/predict/"
_V2 = "/v2/models/"
_INFER = "/infer"
_VERSIONS = "/versions/"

Target = tuple[Adapter, str | None, str | None]
"""The adapter that serves a path, the model the path names and the version it names."""


class FastPath:
    """Which inference route a path is, and the adapter that serves it."""

    def __init__(self, pipeline: Pipeline, predict: Adapter, v2: Adapter) -> None:
        self.pipeline = pipeline
        self.predict = predict
        self.v2 = v2

    def match(self, path: str) -> Target | None:
        if path == "/predict":
            return self.predict, None, None
        if path.startswith(_PREDICT):
            return _named(self.predict, path[len(_PREDICT):])
        if path.startswith(_V2) and path.endswith(_INFER):
            return _named(self.v2, path[len(_V2):-len(_INFER)])
        return None


def _named(adapter: Adapter, rest: str) -> Target | None:
    """``{name}`` or ``{name}/versions/{version}``, neither empty nor holding a ``/``."""
    name, versions, version = rest.partition(_VERSIONS)
    if not name or "/" in name:
        return None
    if not versions:
        return adapter, name, None
    return (adapter, name, version) if version and "/" not in version else None


class BatchserveApp(FastAPI):
    """FastAPI, with the inference routes served ahead of its middleware (``fast_path``)."""

    fast_path: FastPath | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        fast = self.fast_path
        if fast is not None and scope["type"] == "http" and scope["method"] == "POST":
            target = fast.match(scope["path"])
            if target is not None:
                adapter, name, version = target
                response = await fast.pipeline.serve(adapter, scope, receive, name, version)
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)
