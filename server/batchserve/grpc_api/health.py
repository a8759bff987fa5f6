"""``grpc.health.v1.Health`` (grpcio-health-checking's service), mirroring ``/readyz``.

A service is the server (``""``, or ``inference.GRPCInferenceService``: SERVING when ``/readyz``
would answer 200, NOT_SERVING while loading, draining, or while a worker is not ready) or a
model's name (SERVING when ``ModelReady`` would answer true for it). ``Check`` answers from that
state at each call (NOT_FOUND for another name). ``Watch`` streams it: the status at once
(SERVICE_UNKNOWN for a name that is no model, as the health protocol says: the stream goes on,
and says so if it becomes one), then each change.

A watch wakes on ``ModelRegistry.changes``: notified by the registry when a model's state
changes, by the drain, and by one poll every ``POLL_S`` while watches are open, of what nothing
notifies (the other workers' readiness, from the status files they rewrite every 0.5 s; a
model's batching loop that stopped), when that moved. Once the server drains, a watch sends
NOT_SERVING and ends (OK), so that no open stream holds the drain. At most
``limit_concurrency`` watches are open at once in a process (RESOURCE_EXHAUSTED past it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2

from batchserve.errors import ModelNotFound
from batchserve.grpc_api.service import SERVICE, Context
from batchserve.routes import readiness
from batchserve.state import AppState
from batchserve.v2.routes import lookup_version

log = logging.getLogger(__name__)

POLL_S = 0.5
"""How often, while watches are open, what no one notifies is read again."""

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
        self.limit = state.settings.limit_concurrency
        self.watches = 0
        """The watches open now."""
        self._polling: asyncio.Task[None] | None = None

    async def Check(self, request: Any, context: Context) -> Any:
        status = serving_status(self.state, request.service)
        if status == UNKNOWN:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r:.80}")
        return _Status(status=status)

    async def Watch(self, request: Any,  # type: ignore[override]  # an async generator: grpc.aio streams what it yields
                    context: Context) -> AsyncIterator[Any]:
        if self.watches >= self.limit:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{self.watches} health watches "
                                "are open, the most this server keeps (BATCHSERVE_LIMIT_CONCURRENCY)")
        self.watches += 1
        if self._polling is None:
            self._polling = asyncio.create_task(self._poll(), name="health-poll")
            self._polling.add_done_callback(_log_failure)
        try:
            sent = None
            while True:
                changed = self.changes.next()  # taken before the read: a change during it wakes us
                status = serving_status(self.state, request.service)
                if status != sent:
                    yield _Status(status=status)
                    sent = status
                if self.state.draining:
                    return
                await changed.wait()
        finally:
            self.watches -= 1
            if self.watches == 0 and self._polling is not None:
                self._polling.cancel()
                self._polling = None

    async def _poll(self) -> None:
        """Every ``POLL_S``: notify ``changes`` when what nothing notifies moved."""
        seen = self._unnotified()
        while True:
            await asyncio.sleep(POLL_S)
            now = self._unnotified()
            if now != seen:
                seen = now
                self.changes.notify()

    def _unnotified(self) -> tuple[bool, frozenset[str]]:
        """The server's readiness (the other workers' included) and the stopped batching loops."""
        return readiness(self.state)[0], frozenset(self.state.registry.broken())

    def drain(self) -> None:
        """Wake the watches (the server is draining): each says NOT_SERVING and ends."""
        self.changes.notify()


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the health watches' poll stopped: %r", task.exception())
