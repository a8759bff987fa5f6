"""The lean batched floor: the diabetes model served with dynamic batching and nothing else, on
granian's RSGI interface (no ASGI, no framework, no features).

Each POST /predict body ({"model": ..., "inputs": [[10 floats], ...]}, what benchmarks/post.lua
sends) is parsed with orjson and its rows queued with one future; the first row queued schedules
a flush, which predicts every queued row as one batch with the scikit-learn estimator, on the
event loop, and answers each request with its slice. Any GET answers 200 (the readiness probe).
What batchserve's request path costs beyond this is what its features cost.

Serve with: python -m granian --interface rsgi --http 1 --loop uvloop --no-ws --port 8001 \\
    benchmarks.lean_floor_app:app
The model is $LEAN_ARTIFACT, or models/artifacts/diabetes.joblib (`make artifacts`);
benchmarks/http_floor.py measures batchserve against it as kind "lean".
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import joblib
import numpy
import orjson
from granian.rsgi import HTTPProtocol, Scope  # type: ignore[attr-defined]  # re-exported, not in __all__

ARTIFACT = Path(os.environ.get("LEAN_ARTIFACT", Path(__file__).resolve().parent.parent
                               / "models" / "artifacts" / "diabetes.joblib"))
_JSON = [("content-type", "application/json")]
_TEXT = [("content-type", "text/plain")]


class LeanFloor:
    """An RSGI app: one queue of rows, flushed as one ``predict`` call per loop pass."""

    def __init__(self, artifact: Path) -> None:
        self.artifact = artifact
        self.estimator: Any = None
        self.pending: list[tuple[list[list[float]], asyncio.Future[list[float]]]] = []

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # granian calls this in the worker before it serves, so the load is not on a request.
        self.estimator = joblib.load(self.artifact)

    async def __rsgi__(self, scope: Scope, protocol: HTTPProtocol) -> None:
        if scope.method != "POST":
            protocol.response_bytes(200, _TEXT, b"ok")
            return
        try:
            payload = orjson.loads(await protocol())
            rows = payload["inputs"]
            model = payload["model"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            protocol.response_bytes(422, _TEXT, b"a JSON object with model and inputs is needed")
            return
        future: asyncio.Future[list[float]] = asyncio.get_running_loop().create_future()
        if not self.pending:
            asyncio.get_running_loop().call_soon(self.flush)
        self.pending.append((rows, future))
        try:
            outputs = await future
        except (ValueError, TypeError) as exc:  # rows the estimator refused fail their whole batch
            protocol.response_bytes(422, _TEXT, str(exc).encode())
            return
        protocol.response_bytes(200, _JSON, orjson.dumps({"model": model, "outputs": outputs}))

    def flush(self) -> None:
        """Predict every queued row in one call and hand each request its slice."""
        batch, self.pending = self.pending, []
        try:
            predictions: list[float] = self.estimator.predict(
                numpy.asarray([row for rows, _ in batch for row in rows], dtype=numpy.float64)).tolist()
        except (ValueError, TypeError) as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        start = 0
        for rows, future in batch:
            if not future.done():
                future.set_result(predictions[start:start + len(rows)])
            start += len(rows)


app = LeanFloor(ARTIFACT)
