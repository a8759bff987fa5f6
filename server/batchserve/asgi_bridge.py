"""An ASGI application served over RSGI: batchserve's FastAPI routes (docs, health, models,
metrics, management) behind granian's RSGI interface (``rsgi.py``).

The RSGI scope becomes an ASGI ``http`` scope; ``receive`` gives the body in chunks, then waits
for the client to go away (``http.disconnect``); ``send`` answers with one ``response_bytes``
when the body comes in one message (every JSON route), or streams it (files). The ASGI lifespan
is not driven here: the server runs the app's lifespan once (``serving.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from granian.rsgi import HTTPProtocol, ProtocolClosed, Scope  # type: ignore[attr-defined]
from starlette.types import ASGIApp, Message

_ASGI = {"version": "3.0", "spec_version": "2.3"}


def address(text: str) -> tuple[str, int] | None:
    """RSGI's ``{address}:{port}`` as ASGI's ``(host, port)``."""
    host, _, port = text.rpartition(":")
    return (host.strip("[]"), int(port)) if port.isdigit() else None


def asgi_scope(scope: Scope) -> dict[str, Any]:
    return {
        "type": "http", "asgi": _ASGI, "http_version": scope.http_version, "method": scope.method,
        # granian gives the path percent-decoded, as ASGI's path is (its raw form is not kept)
        "scheme": scope.scheme, "path": scope.path,
        "query_string": scope.query_string.encode("latin-1"), "root_path": "",
        "headers": [(name.lower().encode("latin-1"), value.encode("latin-1"))
                    for name, value in scope.headers.items()],
        "client": address(scope.client), "server": address(scope.server), "state": {},
    }


async def serve_asgi(app: ASGIApp, scope: Scope, protocol: HTTPProtocol) -> None:
    """Serve the RSGI request ``scope`` with the ASGI ``app``."""
    await serve_asgi_scope(app, asgi_scope(scope), scope, protocol)


async def serve_asgi_scope(app: ASGIApp, asgi: dict[str, Any], scope: Scope, protocol: HTTPProtocol) -> int:
    """``serve_asgi`` with the ASGI scope made already (``asgi_scope(scope)``: the app's router
    leaves the matched route's ``path_params`` in it); the status answered."""
    body = _Body(protocol)
    response = _Response(protocol)
    await app(asgi, body.receive, response.send)
    if not response.started:  # the app sent nothing: a bug, answered as ASGI servers do
        protocol.response_bytes(500, [("content-type", "text/plain")], b"Internal Server Error")
        return 500
    return response.status


class _Body:
    __slots__ = ("_chunks", "_done", "_protocol")

    def __init__(self, protocol: HTTPProtocol) -> None:
        self._protocol = protocol
        self._chunks: AsyncIterator[bytes] = aiter(protocol)
        self._done = False

    async def receive(self) -> Message:
        if not self._done:
            try:
                chunk = await anext(self._chunks)
            except StopAsyncIteration:
                self._done = True
                return {"type": "http.request", "body": b"", "more_body": False}
            except ProtocolClosed:
                self._done = True
                return {"type": "http.disconnect"}
            return {"type": "http.request", "body": chunk, "more_body": True}
        await self._protocol.client_disconnect()
        return {"type": "http.disconnect"}


class _Response:
    __slots__ = ("_headers", "_protocol", "_stream", "started", "status")

    def __init__(self, protocol: HTTPProtocol) -> None:
        self._protocol = protocol
        self.status = 500
        self._headers: list[tuple[str, str]] = []
        self._stream: Any = None
        self.started = False

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.status = message["status"]
            self._headers = [(name.decode("latin-1"), value.decode("latin-1"))
                             for name, value in message.get("headers", ())]
            return
        if kind != "http.response.body":
            return
        body: bytes = message.get("body", b"")
        more = message.get("more_body", False)
        if self._stream is None:
            self.started = True
            if not more:
                self._protocol.response_bytes(self.status, self._headers, body)
                return
            self._stream = self._protocol.response_stream(self.status, self._headers)
        if body:
            await self._stream.send_bytes(body)
