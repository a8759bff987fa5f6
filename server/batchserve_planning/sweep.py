"""Candidates of a ``recommend`` sweep, and the load ramp that measures each one.

The ramp doubles the number of concurrent clients (1, 2, 4, ...) until the p99
latency leaves the SLO, errors appear, or throughput stops growing for two steps (a
plateau: more clients then only add queueing), then tries once between the last
level inside the SLO and the first outside it. A candidate's capacity is the highest
throughput of a step inside the SLO.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from batchserve_planning.load.inputs import Requests
    from batchserve_planning.load.progress import Bars
    from batchserve_planning.load.results import Summary

PLATEAU = 0.03
"""A step that adds less than this share of throughput ends the ramp."""
MAX_ERROR_RATE = 0.001
"""Share of non-2xx answers a step may have and still count as within the SLO."""


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

    def label(self) -> str:
        text = f"batch {self.max_batch_size}, wait {self.max_wait_ms:g} ms, {self.instances} inst"
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


@dataclass(frozen=True)
class Step:
    concurrency: int
    rps: float
    rows_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    error_rate: float
    mean_batch_size: float | None
    within_slo: bool

    @classmethod
    def of(cls, summary: Summary, slo_ms: float) -> Step:
        latency = summary.latency_ms
        within = latency["p99"] <= slo_ms and summary.error_rate <= MAX_ERROR_RATE
        return cls(summary.concurrency, summary.ok_rps, summary.rows_per_s, latency["p50"], latency["p99"],
                   latency["max"], summary.error_rate, summary.mean_batch_size, within)


@dataclass
class Outcome:
    """What one candidate measured."""

    candidate: Candidate
    steps: list[Step] = field(default_factory=list)
    peak_rss_bytes: int | None = None
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
                "peak_rss_bytes": self.peak_rss_bytes, "gpu_bytes": self.gpu_bytes,
                "seconds": self.seconds, "error": self.error}


@dataclass(frozen=True)
class RampSettings:
    slo_ms: float
    max_concurrency: int = 512
    step_s: float = 1.0
    """Shortest measurement of a step..."""
    min_responses: int = 300
    """...which goes on until this many answers..."""
    max_step_s: float = 8.0
    """...for at most this long."""
    warmup_s: float = 0.3
    timeout_s: float = 30.0
    rows_per_request: int = 1
    processes: int = 1
    load_cpus: set[int] | None = None


def measure_step(url: str, model: str, requests: Requests, concurrency: int, settings: RampSettings,
                 bars: Bars | None, label: str, *, duration_s: float | None = None,
                 min_responses: int | None = None) -> Step:
    from batchserve_planning.load.measure import measure
    from batchserve_planning.load.shared import LoadSpec

    host, _, port = url.removeprefix("http://").partition(":")
    spec = LoadSpec(host, int(port), requests.requests, mode="closed", concurrency=concurrency,
                    duration_s=duration_s or settings.step_s, warmup_s=settings.warmup_s,
                    timeout_s=settings.timeout_s,
                    min_responses=settings.min_responses if min_responses is None else min_responses,
                    max_duration_s=max(settings.max_step_s, duration_s or 0))
    summary = measure(spec, url, model, requests.rows_per_request, processes=min(settings.processes,
                      concurrency), cpus=settings.load_cpus, bars=bars, label=label)
    return Step.of(summary, settings.slo_ms)


def ramp(url: str, model: str, requests: Requests, settings: RampSettings, bars: Bars | None,
         label: str, on_step: Any = None) -> list[Step]:
    """Steps of increasing concurrency (see the module's docstring)."""
    steps: list[Step] = []

    def run(concurrency: int) -> Step:
        step = measure_step(url, model, requests, concurrency, settings, bars,
                            f"{label} @ {concurrency} clients")
        steps.append(step)
        if on_step is not None:
            on_step(step)
        return step

    concurrency, best_rate, last_ok, flat = 1, 0.0, 0, 0
    while concurrency <= settings.max_concurrency:
        step = run(concurrency)
        if not step.within_slo and last_ok and steps[-2].p99_ms < settings.slo_ms / 2:
            # From well inside the SLO to outside it in one doubling: on a shared machine that is
            # often a stall elsewhere, so measure that level once more before believing it.
            step = run(concurrency)
        if not step.within_slo:
            break
        last_ok = concurrency
        flat = flat + 1 if best_rate and step.rows_per_s < best_rate * (1 + PLATEAU) else 0
        if flat == 2:
            return steps
        best_rate = max(best_rate, step.rows_per_s)
        concurrency *= 2
    middle = (last_ok + concurrency) // 2
    if last_ok and concurrency <= settings.max_concurrency and last_ok < middle < concurrency:
        run(middle)
    return steps


def batch_sizes(cap: int) -> list[int]:
    sizes = [1]
    while sizes[-1] * 2 <= cap:
        sizes.append(sizes[-1] * 2)
    return sizes
