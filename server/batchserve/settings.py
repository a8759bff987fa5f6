"""Server settings: CLI flags override ``BATCHSERVE_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BATCHSERVE_", extra="forbid")

    host: str = "127.0.0.1"
    """Address to bind; the container sets 0.0.0.0."""
    port: int = Field(default=8000, ge=0, le=65535)
    """TCP port; 0 picks a free one."""
    config: Path = Path("models/models.toml")
    """The model repository file."""
    management_port: int | None = Field(default=None, ge=1, le=65535)
    """Serve the management API on this port only (same host), so that a Service or an ingress
    can leave it out; the main port then answers 404 for it. Unset: on the main port."""
    grpc_port: int | None = Field(default=None, ge=0, le=65535)
    """Serve the Open Inference Protocol over gRPC (``inference.GRPCInferenceService``, as
    tritonclient.grpc calls it, and the ``grpc.health.v1`` health service) on this port too
    (Triton's is 8001; 0 picks a free one); the ``grpc`` extra. Unset: no gRPC."""
    grpc_listeners: int = Field(default=4, ge=1, le=64)
    """gRPC servers per process on ``grpc_port`` (each its own listener, SO_REUSEPORT: the kernel
    spreads connections over them). One grpc.aio server takes its calls one at a time, so small
    calls from many connections rarely share a batch; several take them side by side
    (``grpc_api/server.py``; benchmarks/README.md, "gRPC listeners")."""
    workers: int | Literal["auto"] = Field(default=1)
    """Server processes behind the port, each with its own event loop, batchers and model
    copies (``batchserve/workers/``). ``auto``: from the cores this server may use and the
    models' instances and threads (``cluster/cores.py``)."""
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    log_format: Literal["text", "json"] = "text"
    """``json``: one JSON object per log line, with the ``trace_id`` and ``span_id`` of the
    request a line concerns when tracing is on (``batchserve/logs.py``)."""
    tracing: bool = False
    """Export OpenTelemetry traces of requests and batches, configured by the standard
    ``OTEL_*`` variables (``batchserve/tracing.py``; the ``tracing`` extra)."""
    shutdown_grace_s: float = Field(default=30.0, ge=0)
    """On SIGTERM, how long queued and running requests get to finish before the exit: one grace
    for the whole drain, from the signal to the exit. 0 means no wait: they are dropped at once."""
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1)
    """Larger request bodies are refused with 413 without being read."""
    max_inflight_body_bytes: int = Field(default=256 * 1024 * 1024, ge=1)
    """Bytes all request bodies being read may hold together (each reserves its Content-Length,
    a chunked one what it has sent). A body that would pass it is refused with 503 and
    Retry-After before it is read. The default leaves most of a 4 GiB pod to the models."""
    limit_concurrency: int = Field(default=2048, ge=1)
    """Most requests in flight at once; past it a request is answered 503 at once (``rsgi.py``).
    Connections past twice this wait to be accepted."""
    max_items: int = Field(default=4096, ge=1)
    """Most items (rows) in one request; more are refused with 413. A request is also held to its
    model's ``max_queue`` (400 past it), so the lower of the two is the real cap."""
    access_log: bool = False
    """One log line per request (method, path, status, duration, model, ``X-Request-Id``) on the
    ``batchserve.access`` logger (``batchserve/access_log.py``)."""
    strict_readiness: bool = True
    """``/readyz`` (and v2's ``/v2/health/ready``) answers 200 only once every model is ready; one
    failed model keeps it at 503. ``False`` (Triton's ``--strict-readiness=false``): 200 once no
    model is loading and every model that loaded is ready; the failed ones are still listed."""
    management_token: SecretStr | None = Field(default=None, min_length=16)
    """Turns the management API on; every call must send ``Authorization: Bearer <token>``.
    From the environment only (BATCHSERVE_MANAGEMENT_TOKEN): a flag would show in ``ps``."""

    @model_validator(mode="after")
    def _check(self) -> ServerSettings:
        if self.management_port is not None and self.management_port == self.port:
            raise ValueError(f"management_port must differ from port ({self.port}); leave it unset "
                             "to serve the management API on the main port")
        if self.grpc_port and self.grpc_port in (self.port, self.management_port):
            raise ValueError(f"grpc_port ({self.grpc_port}) must differ from port and management_port")
        if isinstance(self.workers, int) and not 1 <= self.workers <= 256:
            raise ValueError(f"workers must be 1 to 256 or 'auto', not {self.workers}")
        if self.max_inflight_body_bytes < self.max_body_bytes:
            raise ValueError(f"max_inflight_body_bytes ({self.max_inflight_body_bytes}) must be at least "
                             f"max_body_bytes ({self.max_body_bytes}), or no body of the largest size "
                             "allowed could ever be read")
        return self
