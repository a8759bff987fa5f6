"""Responses: the one JSON shape of every error, ``{"error": {"type": ..., "message": ...}}``
(under ``/v2``, the Open Inference Protocol's ``{"error": "message"}``: its clients read that),
and ``JSONBytes``, a body already encoded, for the inference routes."""

from __future__ import annotations

from collections.abc import Mapping

from fastapi.responses import JSONResponse
from starlette.responses import Response


def error_response(status: int, kind: str, message: str,
                   headers: Mapping[str, str] | None = None, *, path: str = "") -> JSONResponse:
    """The error body of a request to ``path``: v2's shape under ``/v2`` (Triton's and KServe's
    clients concatenate ``error`` to a string), batchserve's everywhere else."""
    if is_v2(path):
        return JSONResponse({"error": message}, status_code=status, headers=headers)
    return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status,
                        headers=headers)


def is_v2(path: str) -> bool:
    """Whether ``path`` is one of the Open Inference Protocol's (``/v2``, ``/v2/...``)."""
    return path == "/v2" or path.startswith("/v2/")


class JSONBytes(Response):
    """A 200 whose body is JSON already encoded (orjson): its two headers made only when asked
    for (an ASGI send, or a header added), where Starlette's ``Response`` works them out from its
    arguments on every request; over RSGI the usual answer never asks (``rsgi.answer``)."""

    media_type = "application/json"

    def __init__(self, body: bytes) -> None:  # no super().__init__(): that is the cost saved
        self.status_code = 200
        self.body = body
        self.background = None
        self._raw_headers: list[tuple[bytes, bytes]] | None = None

    @property
    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        if self._raw_headers is None:
            self._raw_headers = [(b"content-length", str(len(self.body)).encode()),
                                 (b"content-type", b"application/json")]
        return self._raw_headers

    @raw_headers.setter
    def raw_headers(self, value: list[tuple[bytes, bytes]]) -> None:
        self._raw_headers = value

    @property
    def plain(self) -> bool:
        """Its headers are the usual two (none was asked for, so none was added)."""
        return self._raw_headers is None
