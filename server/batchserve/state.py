"""What the routes share: settings, the models, the metrics, and whether we are draining."""

from __future__ import annotations

from dataclasses import dataclass

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
