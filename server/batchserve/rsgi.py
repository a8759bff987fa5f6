"""batchserve on granian's RSGI interface (``docs/spec/RSGI.md`` in granian's repository: a
published server interface, where granian's Rust side does the sockets and HTTP).

``RsgiApp`` is the one entry of every request. An inference POST (``/predict``,
``/predict/{model}``, v2's ``/v2/models/{name}/infer``: ``FastPath.match``) becomes a ``Call``
served by ``Pipeline.run``: its body read from the protocol at once (a declared length) or in
chunks, its disconnect the protocol's, its answer one ``response_bytes``. Everything else
(docs, health, models, management, metrics) is the FastAPI app, reached through
``asgi_bridge.serve_asgi``.

A request past ``limit_concurrency`` in flight is answered 503 (``overloaded``, in its protocol's
error shape, with ``Retry-After``) before anything is read. The
requests in flight are kept, so that the drain can bound its wait (``serving.py``): granian's
own stop waits for them without a limit.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from granian.rsgi import HTTPProtocol, ProtocolClosed, Scope  # type: ignore[attr-defined]
from starlette.responses import Response
from starlette.types import ASGIApp

from batchserve.access_log import AccessLog
from batchserve.asgi_bridge import serve_asgi
from batchserve.errors import BatchserveError, ClientDisconnected, Overloaded, ShuttingDown
from batchserve.fastpath import FastPath
from batchserve.headers import RequestHeaders
from batchserve.lifecycle import Call
from batchserve.responses import JSONBytes, error_response

_JSON = [("content-type", "application/json")]


class RsgiApp:
    """An RSGI application serving batchserve's FastAPI app and its inference routes."""

    def __init__(self, app: ASGIApp, fast: FastPath | None, limit_concurrency: int,
                 access_log: AccessLog | None = None) -> None:
        self.app = app
        self.fast = fast
        self.limit_concurrency = limit_concurrency
        self.access_log = access_log  # None: off (``access_log.py``)
        self.in_flight: set[asyncio.Task[Any]] = set()
        """The requests being served (their tasks), for the drain."""

    async def __rsgi__(self, scope: Scope, protocol: HTTPProtocol) -> None:
        if scope.proto != "http":  # websockets are off; nothing else is served
            return
        task = asyncio.current_task()
        assert task is not None  # granian runs each request in a task
        if len(self.in_flight) >= self.limit_concurrency:
            limit = self.limit_concurrency
            refuse(protocol, scope.path, Overloaded(
                f"the server is at its limit of {limit} request{'s' if limit != 1 else ''} in "
                "flight (BATCHSERVE_LIMIT_CONCURRENCY); retry later"))
            return
        self.in_flight.add(task)
        try:
            fast = self.fast
            target = fast.match(scope.path) if fast is not None and scope.method == "POST" else None
            if target is None:
                if self.access_log is None:
                    await serve_asgi(self.app, scope, protocol)
                else:
                    await self.access_log.asgi(self.app, scope, protocol)
                return
            assert fast is not None
            adapter, name, version = target
            call = Call(adapter, name, RequestHeaders.from_lookup(scope.headers.get), method="POST",
                        path=scope.path, query=scope.query_string.encode("latin-1"), version=version)
            response = await fast.pipeline.run(call, lambda: RsgiChunks(protocol),
                                               protocol.client_disconnect, lambda: body_whole(protocol))
            answer(protocol, response)
            if self.access_log is not None:
                self.access_log.inference(scope, call, response.status_code)
        except asyncio.CancelledError:  # the drain's grace is spent (serving.py)
            with contextlib.suppress(RuntimeError):  # unless its answer went out already
                refuse(protocol, scope.path, ShuttingDown(
                    "the server stopped before this request finished"), close=True)
        finally:
            self.in_flight.discard(task)


class RsgiChunks:
    """The request's body, chunk by chunk; ``ClientDisconnected`` if the client goes away.
    (An async iterator, not an async generator: mypyc can compile the one, not the other.)"""

    def __init__(self, protocol: HTTPProtocol) -> None:
        self._chunks = protocol.__aiter__()

    def __aiter__(self) -> RsgiChunks:
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk: bytes = await self._chunks.__anext__()
        except ProtocolClosed:
            raise ClientDisconnected("client disconnected while sending the body") from None
        return chunk


async def body_whole(protocol: HTTPProtocol) -> bytes:
    """The request's body at once (its length declared); ``ClientDisconnected`` if the client
    goes away first."""
    try:
        body: bytes = await protocol()
    except ProtocolClosed:
        raise ClientDisconnected("client disconnected while sending the body") from None
    return body


def refuse(protocol: HTTPProtocol, path: str, exc: BatchserveError, *, close: bool = False) -> None:
    """Answer ``exc`` in the error shape of ``path``'s protocol, before or instead of serving
    it; ``close``: and close the connection."""
    response = error_response(exc.status, exc.type, exc.message, exc.headers, path=path)
    if close:
        response.headers["connection"] = "close"
    answer(protocol, response)


def answer(protocol: HTTPProtocol, response: Response) -> None:
    """Send ``response`` (an inference route's: its body whole) on ``protocol``; granian frames
    it and sets its length."""
    if type(response) is JSONBytes and response.plain:  # the usual answer: its headers are known
        # (a version's answer has one more: routing.VERSION_HEADER)
        protocol.response_bytes(200, _JSON, response.body)  # type: ignore[arg-type]  # bytes
        return
    headers = [(name.decode("latin-1"), value.decode("latin-1"))
               for name, value in response.raw_headers if name != b"content-length"]
    protocol.response_bytes(response.status_code, headers, bytes(response.body))
