"""A ``recommend`` candidate (one configuration of a model) and what its measurement found."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from batchserve_planning.ramp import Step

SPREAD_CLIENTS = 4
"""Clients per worker before a ramp of several workers may end: the kernel spreads connections
over SO_REUSEPORT workers by a hash of each, so with fewer some worker may get none (all 4 of 4
clients in one of two workers: 1 in 8; all 8 of 8: 1 in 128), and a plateau seen there is one
worker's."""


@dataclass(frozen=True)
class Candidate:
    max_batch_size: int
    max_wait_ms: float
    instances: int
    device: str = "cpu"
    dtype: str | None = None
    """None: the backend has no ``dtype`` option."""
    torch_threads: int | None = None
    """Set where the instances share the CPU's cores (``options.torch_threads``); None: as configured."""
    workers: int = 1
    """Server processes (``batchserve serve --workers``), each with its own copy of the model."""

    def label(self) -> str:
        text = (f"batch {self.max_batch_size}, wait {self.max_wait_ms:g} ms, "
                f"{self.workers} worker{'s' if self.workers > 1 else ''} x {self.instances} inst")
        if self.torch_threads is not None:
            text += f" x {self.torch_threads} thread{'s' if self.torch_threads > 1 else ''}"
        if self.device != "cpu" or self.dtype not in (None, "float32"):
            text += f", {self.device}" + (f" {self.dtype}" if self.dtype else "")
        return text

    def table(self, base: dict[str, Any]) -> dict[str, Any]:
        """``base`` (a ``[[models]]`` table) with this candidate's settings."""
        table = {**base, "device": self.device, "max_batch_size": self.max_batch_size,
                 "max_wait_ms": self.max_wait_ms, "instances": self.instances}
        options = dict(base.get("options", {}))
        if self.dtype is not None and self.dtype != options.get("dtype", "float32"):
            options["dtype"] = self.dtype
        if self.torch_threads is not None:
            options["torch_threads"] = self.torch_threads
        if options:
            table["options"] = options
        return table

    def fill_clients(self) -> int:
        """The clients below which no plateau ends this candidate's ramp (``ramp.climb``): enough
        to fill its batches (batch size x workers x instances), and with several workers enough
        for the connections to reach each of them (``SPREAD_CLIENTS`` a worker)."""
        filled = self.max_batch_size * self.workers * self.instances
        return filled if self.workers == 1 else max(filled, SPREAD_CLIENTS * self.workers)

    def serve_args(self) -> list[str]:
        """The server's flags for this candidate (always given: a ``BATCHSERVE_WORKERS`` in the
        environment must not change what is measured)."""
        return ["--workers", str(self.workers)]


@dataclass
class Outcome:
    """What one candidate measured."""

    candidate: Candidate
    steps: list[Step] = field(default_factory=list)
    peak_rss_bytes: int | None = None
    """The whole server's: the supervisor's and every worker's peaks, summed (``proctree``)."""
    processes: int | None = None
    """How many processes ``peak_rss_bytes`` covers (1, or 1 + the workers)."""
    gpu_bytes: int | None = None
    seconds: float = 0.0
    error: str | None = None

    @property
    def best(self) -> Step | None:
        inside = [s for s in self.steps if s.within_slo]
        return max(inside, key=lambda s: s.rows_per_s) if inside else None

    def to_dict(self) -> dict[str, Any]:
        best = self.best
        return {"candidate": asdict(self.candidate), "label": self.candidate.label(),
                "steps": [asdict(s) for s in self.steps], "best": asdict(best) if best else None,
                "peak_rss_bytes": self.peak_rss_bytes, "processes": self.processes,
                "gpu_bytes": self.gpu_bytes,
                "seconds": self.seconds, "error": self.error}
