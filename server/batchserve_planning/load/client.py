"""A lean HTTP/1.1 keep-alive connection for load generation.

A general-purpose client (httpx, aiohttp) spends tens of microseconds of Python per
request on features a load generator does not need, which would make the load
generator the bottleneck of a fast server. Here each request is pre-built bytes,
the response is parsed by ``httptools`` (llhttp, in C: content length, chunked
bodies, keep-alive), and completion is a plain callback: no task or future per
request. Bodies are kept only for error responses, as examples for the report.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

ERROR_BODY_BYTES = 512
"""Most bytes of an error response kept as an example."""

STATUS_CONNECTION_ERROR = 0
"""Pseudo status of a request whose connection failed before a response."""
STATUS_TIMEOUT = 1
"""Pseudo status of a request that had no response within the timeout."""

Done = Callable[["Connection", int, bytes], None]
"""Called once per request with the connection, the status and (errors only) the body start."""


class Connection(asyncio.Protocol):
    """One keep-alive connection that carries one request at a time."""

    def __init__(self, on_done: Done) -> None:
        from httptools import HttpResponseParser

        self._on_done = on_done
        self._parser = HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._body = bytearray()
        self._keep_body = False
        self.busy = False
        """A request is in flight."""
        self.sent_at = 0.0
        """``time.monotonic()`` when the request in flight was written."""
        self.intended_at = 0.0
        """When the request was meant to start (open loop: its arrival time)."""
        self.closed = False

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except Exception:  # httptools.HttpParserError: a broken response ends the connection
            self._fail(STATUS_CONNECTION_ERROR, b"unparseable response")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.busy:
            self._finish(STATUS_CONNECTION_ERROR, b"connection closed before the response")

    # -- httptools callbacks ------------------------------------------------------------------

    def on_headers_complete(self) -> None:
        self._keep_body = self._parser.get_status_code() >= 400
        self._body.clear()

    def on_body(self, body: bytes) -> None:
        if self._keep_body and len(self._body) < ERROR_BODY_BYTES:
            self._body += body[: ERROR_BODY_BYTES - len(self._body)]

    def on_message_complete(self) -> None:
        if not self._parser.should_keep_alive():
            self.close()
        self._finish(self._parser.get_status_code(), bytes(self._body) if self._keep_body else b"")

    # -- use ----------------------------------------------------------------------------------

    def send(self, request: bytes, sent_at: float, intended_at: float) -> None:
        """Write one pre-built request; ``on_done`` is called when it is answered or fails."""
        assert self._transport is not None and not self.busy
        self.busy = True
        self.sent_at = sent_at
        self.intended_at = intended_at
        self._transport.write(request)

    def timeout(self) -> None:
        """Give up on the request in flight: it is reported as a timeout, the connection closed."""
        self._fail(STATUS_TIMEOUT, b"no response within the timeout")

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    def _fail(self, status: int, reason: bytes) -> None:
        if self._transport is not None:
            self._transport.abort()
        self.closed = True
        if self.busy:
            self._finish(status, reason)

    def _finish(self, status: int, body: bytes) -> None:
        self.busy = False
        self._on_done(self, status, body)


async def connect(host: str, port: int, on_done: Done) -> Connection:
    """Open a connection (TCP_NODELAY is asyncio's default for TCP)."""
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(lambda: Connection(on_done), host, port)
    return protocol


def build_request(host: str, port: int, path: str, body: bytes, content_type: str,
                  extra_headers: dict[str, str] | None = None) -> bytes:
    """The bytes of one ``POST`` request with a keep-alive connection."""
    head = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}"]
    head.extend(f"{name}: {value}" for name, value in (extra_headers or {}).items())
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def describe_status(status: int) -> str:
    """How a status appears in reports: the HTTP code, or ``error``/``timeout``."""
    return {STATUS_CONNECTION_ERROR: "error", STATUS_TIMEOUT: "timeout"}.get(status, str(status))
