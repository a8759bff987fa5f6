"""The HTTP floor: a bare FastAPI endpoint that parses the same JSON and returns a constant.

Serve with: python -m uvicorn benchmarks.floor_app:app --port 8001 --no-access-log
It is what any Python server pays per request before a model runs; batchserve is
measured against it in the same run (benchmarks/http_floor.py).
"""

from __future__ import annotations

import orjson
from fastapi import FastAPI, Request, Response

app = FastAPI()
_ANSWER = orjson.dumps({"model": "diabetes", "outputs": [150.0]})


@app.post("/predict")
async def predict(request: Request) -> Response:
    payload = orjson.loads(await request.body())
    if not payload.get("inputs"):
        return Response(b'{"error": "no inputs"}', status_code=422)
    return Response(_ANSWER, media_type="application/json")
