"""What the routes share: settings, the models, the metrics, and whether we are draining."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from batchserve.bodies import BodyBudget
from batchserve.cluster.rundir import Cluster
from batchserve.metrics import Metrics
from batchserve.registry import ModelRegistry
from batchserve.routing import Router
from batchserve.settings import ServerSettings
from batchserve.shadow import Shadows

if TYPE_CHECKING:  # imported only when tracing is on (OpenTelemetry is an extra)
    from batchserve.tracing import Tracing


@dataclass(eq=False)
class AppState:
    settings: ServerSettings
    registry: ModelRegistry
    metrics: Metrics
    draining: bool = False
    """Set on SIGTERM: new requests get 503 while admitted ones finish."""
    drain_deadline_s: float | None = None
    """When the drain must be over (``time.monotonic()``), fixed when it begins."""
    cluster: Cluster | None = None
    """The other worker processes of this server (``--workers N``); ``None`` when it is one."""
    tracing: Tracing | None = None
    """This process's OpenTelemetry tracer (``--tracing``); ``None`` when tracing is off."""
    bodies: BodyBudget = field(init=False)
    """Bytes reserved by the request bodies being read (``settings.max_inflight_body_bytes``)."""
    router: Router = field(init=False)
    """Which version of a model serves a request (``routing.py``)."""
    shadows: Shadows = field(init=False)
    """The copies of answered requests to shadow versions, and their comparison (``shadow.py``)."""

    def __post_init__(self) -> None:
        self.bodies = BodyBudget(self.settings.max_inflight_body_bytes)
        self.router = Router(self.registry)
        self.shadows = Shadows(self.router, self.metrics.registry)


    def is_ready(self) -> bool:
        """Readiness, as ``/readyz`` answers it for this process: its models ready (as
        ``settings.strict_readiness`` says) and not draining."""
        return self.registry.is_ready(strict=self.settings.strict_readiness) and not self.draining

    def begin_drain(self) -> None:
        """Refuse new requests from now on. The first call fixes the deadline of the whole drain,
        ``shutdown_grace_s`` from now: every stage after it (the servers' wait for in-flight
        requests, the batchers' queues) gets what is left of that one grace, not a grace each."""
        self.draining = True
        if self.drain_deadline_s is None:
            self.drain_deadline_s = time.monotonic() + self.settings.shutdown_grace_s

    def drain_left_s(self) -> float:
        """Seconds left of the drain's grace (0 once it is spent; the whole grace before it began)."""
        if self.drain_deadline_s is None:
            return self.settings.shutdown_grace_s
        return max(0.0, self.drain_deadline_s - time.monotonic())
