"""The raw floor: an ASGI app with no framework that reads the body, parses it with orjson and
answers a constant, on the same uvicorn (httptools, uvloop) as batchserve.

Serve with: python -m uvicorn benchmarks.raw_floor_app:app --port 8001 --no-access-log
No Python server on uvicorn can do less per request; benchmarks/http_floor.py measures
batchserve against it and against the FastAPI floor (benchmarks/floor_app.py) in one run.
"""

from __future__ import annotations

import orjson
from starlette.types import Receive, Scope, Send

_ANSWER = orjson.dumps({"model": "diabetes", "outputs": [150.0]})
_JSON = [(b"content-type", b"application/json"), (b"content-length", str(len(_ANSWER)).encode())]
_OK = [(b"content-type", b"text/plain"), (b"content-length", b"2")]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":  # lifespan: nothing to start
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["method"] != "POST":  # readiness probe
        await send({"type": "http.response.start", "status": 200, "headers": _OK})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    if not orjson.loads(body).get("inputs"):
        await send({"type": "http.response.start", "status": 422, "headers": _OK})
        await send({"type": "http.response.body", "body": b"no"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": _JSON})
    await send({"type": "http.response.body", "body": _ANSWER})
