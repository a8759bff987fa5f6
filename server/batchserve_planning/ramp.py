"""The load ramp that measures one candidate of a ``recommend`` sweep, and its steps.

The ramp doubles the number of concurrent clients (1, 2, 4, ...) until the p99
latency leaves the SLO, errors appear, or throughput stops growing for two steps (a
plateau: more clients then only add queueing), then tries once between the last
level inside the SLO and the first outside it. A candidate's capacity is the highest
throughput of a step inside the SLO.
"""

from __future__ import annotations

from dataclasses import dataclass
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
    stages_ms: dict[str, float] | None = None
    """Where a successful request's time went, server side (``stages.py``)."""

    @classmethod
    def of(cls, summary: Summary, slo_ms: float) -> Step:
        latency = summary.latency_ms
        within = latency["p99"] <= slo_ms and summary.error_rate <= MAX_ERROR_RATE
        return cls(summary.concurrency, summary.ok_rps, summary.rows_per_s, latency["p50"], latency["p99"],
                   latency["max"], summary.error_rate, summary.mean_batch_size, within,
                   summary.stages_ms)


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
