"""Serves ``POST /predict`` and ``POST /predict/{model}`` ahead of the framework's routing.

On a small model the per-request framework work, not the model, decides
throughput: every await of a batch suspends and resumes the whole chain of
FastAPI's middleware and routing layers. This ASGI middleware sits just inside
FastAPI's outermost error handling and calls the same handler as the
documented routes (``server/routes.py``), skipping ~15 layers; the OpenAPI
document still comes from those routes. Measured in benchmarks/README.md.
"""

from __future__ import annotations

import logging

from fastapi import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from batchserve.errors import BatchserveError, ClientDisconnected
from batchserve.responses import error_response
from batchserve.routes import predict
from batchserve.state import AppState

log = logging.getLogger(__name__)

_PREFIX = "/predict/"


class PredictFastPath:
    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            if path == "/predict":
                return await self._serve(scope, receive, send, None)
            if path.startswith(_PREFIX) and "/" not in path[len(_PREFIX):] and len(path) > len(_PREFIX):
                return await self._serve(scope, receive, send, path[len(_PREFIX):])
        await self.app(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, model: str | None) -> None:
        try:
            response = await predict(self.state, Request(scope, receive), model)
        except ClientDisconnected:
            return  # nobody to answer
        except BatchserveError as exc:
            response = error_response(exc.status, exc.type, exc.message, exc.headers)
        await response(scope, receive, send)
