"""The access log (``--access-log``, off by default): one line per request, at INFO on the
``batchserve.access`` logger, whatever ``--log-level`` says::

    POST /predict/diabetes 200 1.84 ms model=diabetes request_id=r-17

method, path, status, duration (from the request's arrival to its answer), the model (the one
the path or the body named; ``-`` for a route of none) and the client's ``X-Request-Id`` (``-``
when it sent none; batchserve makes no ids of its own). The path and the id are shown
percent-encoded past the characters a URL path keeps, so a line is always one line of six fields.

``rsgi.py`` calls it: after an inference answer (the fast path: one ``if`` when the log is off),
and around every other route (``asgi``).
"""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import quote

from granian.rsgi import HTTPProtocol, Scope  # type: ignore[attr-defined]
from starlette.types import ASGIApp

from batchserve.asgi_bridge import asgi_scope, serve_asgi_scope
from batchserve.lifecycle import Call

log = logging.getLogger("batchserve.access")

_SAFE = "/:@!$&'()*+,;=-._~"
"""What a path keeps unescaped (RFC 3986's pchar and '/'); anything else is shown %XX."""
_LONGEST = 256
"""The most characters of a path or an id shown."""


class AccessLog:
    """Writes the access log's lines; ``rsgi.RsgiApp`` holds one when ``--access-log`` is on."""

    def __init__(self) -> None:
        log.setLevel(logging.INFO)  # on means shown, whatever the server's log level

    def inference(self, scope: Scope, call: Call, status: int) -> None:
        """An inference request (``Call``) answered ``status``."""
        model = call.model.config.name if call.model is not None else call.name
        self.write(scope, status, call.arrived_s, model)

    async def asgi(self, app: ASGIApp, scope: Scope, protocol: HTTPProtocol) -> None:
        """Serve a request of any other route with ``app`` (``asgi_bridge``), and log it; its
        model is the route's ``{name}`` or ``{model}``, if it has one."""
        arrived_s = time.monotonic()
        asgi = asgi_scope(scope)
        status = await serve_asgi_scope(app, asgi, scope, protocol)
        params: dict[str, Any] = asgi.get("path_params", {})  # set by the router that matched it
        self.write(scope, status, arrived_s, params.get("name") or params.get("model"))

    def write(self, scope: Scope, status: int, arrived_s: float, model: str | None) -> None:
        duration_ms = (time.monotonic() - arrived_s) * 1000
        request_id = scope.headers.get("x-request-id")
        log.info("%s %s %d %.2f ms model=%s request_id=%s", scope.method, _shown(scope.path), status,
                 duration_ms, _shown(model) if model else "-",
                 _shown(request_id) if request_id else "-")


def _shown(text: str) -> str:
    return quote(text[:_LONGEST], safe=_SAFE)
