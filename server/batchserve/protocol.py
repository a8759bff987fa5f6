"""uvicorn's HTTP protocol (httptools), with inference requests served without an ASGI task.

Over ASGI a request costs a task, its receive and two sends as message dicts, and the frames of
every layer between uvicorn and the batcher's future, resumed once more when the batch is
delivered: for a small model that is most of what a request costs (benchmarks/README.md, "HTTP
floor"). ``InferenceProtocol`` hands a POST to an inference route (``fastpath.FastPath``)
straight to ``Pipeline.serve_now`` when its whole body came in with its headers (the usual case:
one small write by the client) and the connection has nothing else in flight; the batch's
delivery answers it with one write of the framed response. Everything else is uvicorn's own
path to the ASGI app, unchanged, and so is a request ``serve_now`` declines (a large body, heavy
preprocessing, many items): that one is handed over with the body it already read.

What an ASGI request gets from uvicorn a request taken here gets too: the server's default
headers (``date``, ``server``), ``Connection: close`` when the client or the answer (a 408) asks
for it, or the server is shutting down; pipelined requests answered in order (one that arrives
while another is in flight on its connection goes uvicorn's way, queued behind it); the
keep-alive timeout; the concurrency limit (a request past it goes uvicorn's way, to its 503);
and a client that goes away has its rows abandoned (``Pending.abandon``).

Built on uvicorn's protocol class, whose internals it relies on (pyproject.toml pins the minor
release it was written against; tests/e2e/test_protocol.py exercises each case above).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import httptools
from starlette.responses import Response
from starlette.types import Scope
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from batchserve.bodies import declared_length
from batchserve.errors import BatchserveError
from batchserve.fastpath import FastPath
from batchserve.headers import RequestHeaders
from batchserve.pipeline import OFFLOAD_BYTES, Adapter, Pending


class InferenceProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol``, serving inference POSTs through ``Pipeline.serve_now``."""

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        # None when the app is not batchserve's (the management port's), or uvicorn wrapped it
        # (trace logging): then every request goes uvicorn's way.
        self._fast: FastPath | None = getattr(self.app, "fast_path", None)
        self._candidate: _Candidate | None = None  # a request whose body is still being parsed
        self._direct: _Direct | None = None  # the request taken here that is not answered yet

    # -- the parser's callbacks ------------------------------------------------------------

    def on_headers_complete(self) -> None:
        candidate = self._take(self._fast) if self._fast is not None else None
        if candidate is None:
            super().on_headers_complete()
        self._candidate = candidate

    def on_body(self, body: bytes) -> None:
        candidate = self._candidate
        if candidate is None:
            super().on_body(body)
        else:
            candidate.body = body if not candidate.body else candidate.body + body

    def on_message_complete(self) -> None:
        candidate = self._candidate
        if candidate is None:
            super().on_message_complete()
            return
        self._candidate = None
        assert self._fast is not None  # _take made the candidate
        direct = _Direct(self, candidate.keep_alive)
        self.cycle = direct  # type: ignore[assignment]  # a pipelined request queues behind it
        pending = self._fast.pipeline.serve_now(candidate.adapter, cast(Scope, self.scope),
                                                candidate.model, candidate.headers, candidate.body,
                                                direct.answer)
        if pending is None:  # declined: uvicorn's way, with the body read so far
            self.cycle = None  # type: ignore[assignment]
            self._hand_over(candidate, complete=True)
        elif not direct.response_complete:
            direct.pending = pending
            self._direct = direct

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        candidate = self._candidate
        if candidate is not None:  # the rest of its body comes later: uvicorn's way
            self._candidate = None
            if not self.transport.is_closing():
                self._hand_over(candidate, complete=False)

    def connection_lost(self, exc: Exception | None) -> None:
        self._candidate = None
        direct, self._direct = self._direct, None
        if direct is not None and not direct.response_complete:
            direct.disconnected = True
            if direct.pending is not None:
                direct.pending.abandon()
        super().connection_lost(exc)

    # -- the choice ------------------------------------------------------------------------

    def _take(self, fast: FastPath) -> _Candidate | None:
        """A candidate for ``serve_now`` when the request in the parser is one, else ``None``."""
        parser = self.parser
        if parser.get_method() != b"POST" or self.root_path or self.access_log:
            return None
        if self.expect_100_continue or parser.should_upgrade():
            return None
        previous = self.cycle
        if (previous is not None and not previous.response_complete) or self.pipeline \
                or self.flow.write_paused:
            return None  # answers go out in order, after what the client has not read yet
        limit = self.limit_concurrency
        if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
            return None  # uvicorn answers 503
        headers = RequestHeaders(self.headers)
        if headers.chunked or headers.content_length is None:
            return None
        try:
            declared_length(headers.content_length, OFFLOAD_BYTES)
        except BatchserveError:  # larger, or malformed: the ASGI path answers that
            return None
        url = httptools.parse_url(self.url)
        if b"%" in url.path:
            return None
        path = url.path.decode("ascii")
        target = fast.match(path)
        if target is None:
            return None
        scope = self.scope
        scope["method"] = "POST"
        version = parser.get_http_version()
        if version != "1.1":
            scope["http_version"] = version
        scope["path"] = path
        scope["raw_path"] = url.path
        scope["query_string"] = url.query or b""
        return _Candidate(target[0], target[1], headers,
                          version != "1.0" and parser.should_keep_alive())

    def _hand_over(self, candidate: _Candidate, *, complete: bool) -> None:
        """Start uvicorn's ASGI cycle for the candidate, with the body it has so far."""
        super().on_headers_complete()
        if candidate.body:
            super().on_body(candidate.body)
        if complete:
            super().on_message_complete()


class _Candidate:
    __slots__ = ("adapter", "body", "headers", "keep_alive", "model")

    def __init__(self, adapter: Adapter, model: str | None, headers: RequestHeaders,
                 keep_alive: bool) -> None:
        self.adapter = adapter
        self.model = model
        self.headers = headers
        self.keep_alive = keep_alive
        self.body = b""


class _NoEvent:
    """What uvicorn's protocol sets on a disconnect, for a request that waits on nothing."""

    def set(self) -> None:
        pass


class _Direct:
    """A request taken by ``serve_now``, standing where uvicorn's protocol keeps its request
    cycle: it reads ``response_complete`` (whether the next request may start), and sets
    ``keep_alive`` (false on shutdown) and ``disconnected``."""

    __slots__ = ("disconnected", "keep_alive", "pending", "protocol", "response_complete")
    message_event = _NoEvent()

    def __init__(self, protocol: InferenceProtocol, keep_alive: bool) -> None:
        self.protocol = protocol
        self.keep_alive = keep_alive
        self.response_complete = False
        self.disconnected = False
        self.pending: Pending | None = None

    def answer(self, response: Response) -> None:
        """Write ``response`` (status, the server's default headers, its own, its body) at once."""
        self.response_complete = True
        self.pending = None  # it holds this answer: no cycle left for the collector
        protocol = self.protocol
        if protocol._direct is self:
            protocol._direct = None
        transport = protocol.transport
        if self.disconnected or transport.is_closing():
            return
        parts = [STATUS_LINE[response.status_code]]
        for name, value in protocol.server_state.default_headers:
            parts += (name, b": ", value, b"\r\n")
        closes = False  # the response says Connection: close (a 408 does)
        for name, value in response.raw_headers:
            if name == b"connection" and b"close" in value.lower():
                closes = True
            parts += (name, b": ", value, b"\r\n")
        if closes:
            self.keep_alive = False
        elif not self.keep_alive:
            parts.append(b"connection: close\r\n")
        parts += (b"\r\n", bytes(response.body))
        transport.write(b"".join(parts))
        if not self.keep_alive:
            transport.close()
        protocol.on_response_complete()
