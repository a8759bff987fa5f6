"""What the routes share: settings, the models, the metrics, and whether we are draining."""

from __future__ import annotations

from dataclasses import dataclass, field

from batchserve.bodies import BodyBudget
from batchserve.metrics import Metrics
from batchserve.registry import ModelRegistry
from batchserve.settings import ServerSettings


@dataclass(eq=False)
class AppState:
    settings: ServerSettings
    registry: ModelRegistry
    metrics: Metrics
    draining: bool = False
    """Set on SIGTERM: new requests get 503 while admitted ones finish."""
    bodies: BodyBudget = field(init=False)
    """Bytes reserved by the request bodies being read (``settings.max_inflight_body_bytes``)."""

    def __post_init__(self) -> None:
        self.bodies = BodyBudget(self.settings.max_inflight_body_bytes)
