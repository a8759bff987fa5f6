"""The one JSON shape of every error: ``{"error": {"type": ..., "message": ...}}``."""

from __future__ import annotations

from collections.abc import Mapping

from fastapi.responses import JSONResponse


def error_response(status: int, kind: str, message: str,
                   headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status,
                        headers=headers)
