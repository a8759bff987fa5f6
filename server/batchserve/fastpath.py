"""Serves ``POST /predict`` and ``POST /predict/{model}`` ahead of the framework's routing.

On a small model the per-request framework work, not the model, decides
throughput: every await of a batch suspends and resumes the whole chain of
FastAPI's middleware and routing layers. This ASGI middleware sits just inside
FastAPI's outermost error handling and calls the same handler as the
documented routes (``batchserve/predict.py``), skipping ~15 layers; the OpenAPI
document still comes from those routes. Measured in benchmarks/README.md.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from batchserve.pipeline import Pipeline
from batchserve.predict import PREDICT

_PREFIX = "/predict/"


class PredictFastPath:
    def __init__(self, app: ASGIApp, pipeline: Pipeline) -> None:
        self.app = app
        self.pipeline = pipeline

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            if path == "/predict":
                return await self._serve(scope, receive, send, None)
            if path.startswith(_PREFIX) and "/" not in path[len(_PREFIX):] and len(path) > len(_PREFIX):
                return await self._serve(scope, receive, send, path[len(_PREFIX):])
        await self.app(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, model: str | None) -> None:
        # The pipeline answers every outcome, errors included; to a client that has gone
        # (499), the server drops what is sent.
        response = await self.pipeline.serve(PREDICT, scope, receive, model)
        await response(scope, receive, send)
