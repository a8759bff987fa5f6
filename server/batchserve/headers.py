"""The request headers the inference routes read, and ``X-Request-Timeout-Ms``'s value."""

from __future__ import annotations

from collections.abc import Iterable

from batchserve.errors import MalformedRequest

TIMEOUT_HEADER = b"x-request-timeout-ms"
_READ = frozenset({"content-type", "content-length", TIMEOUT_HEADER.decode(),
                   "inference-header-content-length", "transfer-encoding"})


class RequestHeaders:
    """The request headers the inference routes read, found in one pass over the raw list."""

    __slots__ = ("chunked", "content_length", "content_type", "content_type_raw", "header_length",
                 "timeout_ms")

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self.content_length: bytes | None = None
        self.chunked = False  # a Transfer-Encoding was sent
        self.content_type = ""  # the media type, lower case, without parameters
        self.content_type_raw = ""  # with parameters (a multipart boundary, say)
        self.timeout_ms: bytes | None = None
        self.header_length: bytes | None = None  # v2's Inference-Header-Content-Length
        for key, value in raw:  # ASGI servers give lower-case names
            if key == b"content-type":
                self.content_type_raw = value.decode("latin-1")
                self.content_type = self.content_type_raw.partition(";")[0].strip().lower()
            elif key == b"content-length":
                self.content_length = value
            elif key == TIMEOUT_HEADER:
                self.timeout_ms = value
            elif key == b"inference-header-content-length":
                self.header_length = value
            elif key == b"transfer-encoding":
                self.chunked = True


    @classmethod
    def from_text(cls, pairs: Iterable[tuple[str, str]]) -> RequestHeaders:
        """The same, from headers as text (RSGI's), names in lower case: only the values read
        are encoded."""
        return cls([(name.encode("latin-1"), value.encode("latin-1")) for name, value in pairs
                    if name in _READ])


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
