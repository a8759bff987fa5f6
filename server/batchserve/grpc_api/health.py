"""``grpc.health.v1.Health`` (grpcio-health-checking's service), mirroring ``/readyz``.

A service is the server (``""``, or ``inference.GRPCInferenceService``: SERVING when ``/readyz``
would answer 200, NOT_SERVING while loading, draining, or while a worker is not ready) or a
model's name (SERVING when ``ModelReady`` would answer true for it). ``Check`` answers from that
state at each call (NOT_FOUND for another name). ``Watch`` streams it: the status at once
(SERVICE_UNKNOWN for a name that is no model, as the health protocol says: the stream goes on,
and says so if it becomes one), then each change. It wakes when the registry says a model's
state changed (``ModelRegistry.changes``) and when the drain begins, and re-reads every
``POLL_S`` besides: what is not notified (the other workers' readiness, from the status files
they rewrite every 0.5 s; a model's batching loop that stopped) is seen within that. Once the
server drains, a watch sends NOT_SERVING and ends (OK), so that no open stream holds the drain.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2

from batchserve.errors import ModelNotFound
from batchserve.grpc_api.service import SERVICE, Context
from batchserve.routes import readiness
from batchserve.state import AppState
from batchserve.v2.routes import lookup_version

POLL_S = 0.5
"""How often a ``Watch`` re-reads the state when nothing notified a change."""

_Status = health_pb2.HealthCheckResponse
SERVING, NOT_SERVING, UNKNOWN = _Status.SERVING, _Status.NOT_SERVING, _Status.SERVICE_UNKNOWN


def serving_status(state: AppState, service: str) -> int:
    """``service``'s status now: SERVING, NOT_SERVING, or SERVICE_UNKNOWN (no such service)."""
    if service in ("", SERVICE):
        return SERVING if readiness(state)[0] else NOT_SERVING
    try:
        model = lookup_version(state, service, None)
    except ModelNotFound:
        return UNKNOWN
    return SERVING if model.ready and not state.draining else NOT_SERVING


class Health(health.aio.HealthServicer):
    """``Check`` and ``Watch`` over one app's state; ``drain`` ends the watches."""

    def __init__(self, state: AppState) -> None:
        super().__init__()
        self.state = state
        self.changes = state.registry.changes

    async def Check(self, request: Any, context: Context) -> Any:
        status = serving_status(self.state, request.service)
        if status == UNKNOWN:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r:.80}")
        return _Status(status=status)

    async def Watch(self, request: Any,  # type: ignore[override]  # an async generator: grpc.aio streams what it yields
                    context: Context) -> AsyncIterator[Any]:
        sent = None
        while True:
            changed = self.changes.next()  # taken before the read: a change during it wakes us
            status = serving_status(self.state, request.service)
            if status != sent:
                yield _Status(status=status)
                sent = status
            if self.state.draining:
                return
            await self.changes.wait(changed, POLL_S)

    def drain(self) -> None:
        """Wake the watches (the server is draining): each says NOT_SERVING and ends."""
        self.changes.notify()
