"""The request headers the inference routes read, and ``X-Request-Timeout-Ms``'s value."""

from __future__ import annotations

from collections.abc import Callable

from batchserve.errors import MalformedRequest

TIMEOUT_HEADER = b"x-request-timeout-ms"
_TIMEOUT = TIMEOUT_HEADER.decode()
ROUTING_HEADER = b"x-routing-key"
"""Keeps one user on one version of a model while its weights stand (``routing.py``)."""
_ROUTING = ROUTING_HEADER.decode()


class RequestHeaders:
    """The request headers the inference routes read: from ASGI's raw list in one pass
    (``__init__``), or looked up by name in RSGI's headers (``from_lookup``)."""

    __slots__ = ("chunked", "content_length", "content_type", "content_type_raw", "header_length",
                 "routing_key", "timeout_ms", "traceparent", "tracestate")

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        content_type = content_length = timeout = header_length = traceparent = tracestate = None
        routing_key = None
        chunked = False  # a Transfer-Encoding was sent
        for key, value in raw:  # ASGI servers give lower-case names
            if key == b"content-type":
                content_type = value.decode("latin-1")
            elif key == b"content-length":
                content_length = value
            elif key == TIMEOUT_HEADER:
                timeout = value
            elif key == b"inference-header-content-length":
                header_length = value
            elif key == b"transfer-encoding":
                chunked = True
            elif key == b"traceparent":
                traceparent = value.decode("latin-1")
            elif key == b"tracestate":
                tracestate = value.decode("latin-1")
            elif key == ROUTING_HEADER:
                routing_key = value.decode("latin-1")
        self._set(content_type, content_length, timeout, header_length, chunked, traceparent,
                  tracestate)
        self.routing_key = routing_key

    def _set(self, content_type: str | None, content_length: bytes | None, timeout_ms: bytes | None,
             header_length: bytes | None, chunked: bool, traceparent: str | None,
             tracestate: str | None) -> None:
        self.content_type_raw = content_type or ""  # with parameters (a multipart boundary, say)
        # the media type, lower case, without parameters
        self.content_type = (self.content_type_raw.partition(";")[0].strip().lower()
                             if content_type != "application/json" else content_type)
        self.content_length = content_length
        self.timeout_ms = timeout_ms  # X-Request-Timeout-Ms
        self.header_length = header_length  # v2's Inference-Header-Content-Length
        self.chunked = chunked
        self.traceparent = traceparent  # W3C trace context, for tracing.py
        self.tracestate = tracestate

    @classmethod
    def from_lookup(cls, get: Callable[[str], str | None]) -> RequestHeaders:
        """The same, from headers as text looked up by lower-case name (RSGI's ``get``): eight
        lookups, where a pass over every header would make a pair of each."""
        headers = cls.__new__(cls)
        headers._set(get("content-type"), _latin1(get("content-length")), _latin1(get(_TIMEOUT)),
                     _latin1(get("inference-header-content-length")),
                     get("transfer-encoding") is not None, get("traceparent"), get("tracestate"))
        headers.routing_key = get(_ROUTING)
        return headers


def _latin1(value: str | None) -> bytes | None:
    return None if value is None else value.encode("latin-1")


def requested_timeout_ms(header: bytes) -> float:
    """``X-Request-Timeout-Ms``, which must be a positive number (422 otherwise)."""
    try:
        requested = float(header)
    except ValueError:
        requested = float("nan")
    if not requested > 0:
        raise MalformedRequest(f"header X-Request-Timeout-Ms must be a positive number, "
                               f"got {header.decode('latin-1')!r:.40}")
    return requested
