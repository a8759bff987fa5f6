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
class Variant:
    """What a sweep searches the batching settings of: a device, a precision and a runtime."""

    device: str
    dtype: str | None = None
    """None: the backend has no ``dtype`` option (and no runtime is searched)."""
    runtime: str | None = None
    """``torch`` or ``onnxruntime`` where ``--runtimes`` searches them; None: the model's backend."""
    graph: str | None = None
    """The ONNX model folder of an ``onnxruntime`` variant (absolute)."""


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
    runtime: str | None = None
    """``torch`` or ``onnxruntime`` where ``--runtimes`` searches them (``dtype`` then the precision,
    ``int8`` included); None: the model's own backend, as configured."""
    graph: str | None = None
    """The ONNX model folder an ``onnxruntime`` candidate serves (``runtimes``)."""

    def label(self) -> str:
        text = (f"batch {self.max_batch_size}, wait {self.max_wait_ms:g} ms, "
                f"{self.workers} worker{'s' if self.workers > 1 else ''} x {self.instances} inst")
        if self.torch_threads is not None:
            text += f" x {self.torch_threads} thread{'s' if self.torch_threads > 1 else ''}"
        if self.runtime is not None:
            text += (f", {self.device}" if self.device != "cpu" else "") + f", {self.runtime} {self.dtype}"
        elif self.device != "cpu" or self.dtype not in (None, "float32"):
            text += f", {self.device}" + (f" {self.dtype}" if self.dtype else "")
        return text

    def variant(self) -> Variant:
        """What decides its outputs (device, precision, runtime), not its speed."""
        return Variant(self.device, self.dtype, self.runtime, self.graph)

    def table(self, base: dict[str, Any]) -> dict[str, Any]:
        """``base`` (a ``[[models]]`` table) with this candidate's settings: an ``onnxruntime`` one
        served by the ONNX preset of ``base``'s backend from ``graph`` (``runtimes.onnx_table``)."""
        from batchserve_planning.runtime_tables import onnx_table, torch_options

        if self.runtime == "onnxruntime":
            assert self.graph is not None
            base = onnx_table(base, self.graph)
        table = {**base, "device": self.device, "max_batch_size": self.max_batch_size,
                 "max_wait_ms": self.max_wait_ms, "instances": self.instances}
        options = dict(base.get("options", {}))
        if self.runtime == "torch":
            options = torch_options(options, self.dtype or "float32")
        elif self.runtime is None and self.dtype not in (None, options.get("dtype", "float32")):
            options["dtype"] = self.dtype
        if self.torch_threads is not None:
            threads = "intra_op_threads" if self.runtime == "onnxruntime" else "torch_threads"
            options[threads] = self.torch_threads
        table.pop("options", None)
        return {**table, "options": options} if options else table

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
    start_s: float = 0.0
    """Of ``seconds``, what its server took to start and become ready."""
    error: str | None = None
    drift: dict[str, float] | None = None
    """Its outputs against the float32 torch reference's on the sample inputs (``accuracy``)."""
    outputs: list[Any] | None = None
    """Those outputs, as rows of numbers (``drift.outputs_as_vectors``), kept for re-checking."""
    excluded: str | None = None
    """Why ``--max-drift`` left it out (not ramped), if it did."""

    @property
    def best(self) -> Step | None:
        return self.best_below()

    def best_below(self, clients: int | None = None) -> Step | None:
        """Its fastest step within the SLO (at fewer than ``clients``, where given)."""
        inside = [s for s in self.steps if s.within_slo and (clients is None or s.concurrency < clients)]
        return max(inside, key=lambda s: s.rows_per_s) if inside else None

    def to_dict(self) -> dict[str, Any]:
        best = self.best
        return {"candidate": asdict(self.candidate), "label": self.candidate.label(),
                "steps": [asdict(s) for s in self.steps], "best": asdict(best) if best else None,
                "peak_rss_bytes": self.peak_rss_bytes, "processes": self.processes,
                "gpu_bytes": self.gpu_bytes,
                "seconds": self.seconds, "start_s": self.start_s, "error": self.error, "drift": self.drift,
                "outputs": self.outputs, "excluded": self.excluded}
