"""Open-loop measurement: Poisson arrivals at a rate, latency counted from each arrival, and the
search for the highest rate a server carries within the SLO.

A closed loop (``ramp``) slows its clients down when the server does, so it never sees the
queue that builds when requests keep arriving; an open loop does. One step offers a rate
(``measure_open``); ``peak_rate`` goes up x1.5 from a start while the steps are within the SLO,
down x0.6 while they are not, then bisects between the highest rate within and the lowest
outside until they are ``resolution`` apart.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from batchserve_planning.ramp import MAX_ERROR_RATE

if TYPE_CHECKING:
    from collections.abc import Callable

    from batchserve_planning.load.inputs import Requests
    from batchserve_planning.load.progress import Bars
    from batchserve_planning.load.results import Summary
    from batchserve_planning.ramp import RampSettings

CARRIED_SHARE = 0.95
"""A step within the SLO answers at least this share of what arrived, 2xx."""
UP, DOWN = 1.5, 0.6
"""The search's factors before it has a rate on each side of the limit."""


@dataclass(frozen=True)
class OpenStep:
    offered_rps: float
    """The rate asked for (the mean of the Poisson process)."""
    carried_rps: float
    """2xx answers per second of the measurement window."""
    rows_per_s: float
    p50_ms: float
    p99_ms: float
    """From each request's arrival, client-side waiting for a free connection included."""
    error_rate: float
    mean_batch_size: float | None
    within_slo: bool
    """p99 within the SLO, errors at most ``ramp.MAX_ERROR_RATE``, and at least ``CARRIED_SHARE``
    of the arrivals of the window answered 2xx in it."""
    arrived_rps: float
    """Arrivals per second the Poisson draw made in the window (``offered_rps`` give or take
    its noise: about 1/sqrt(arrivals), 6% for 300), what ``carried_rps`` is held against."""

    @classmethod
    def of(cls, summary: Summary, slo_ms: float) -> OpenStep:
        latency = summary.latency_ms
        arrived = summary.requests / summary.window_s
        # NaN (nothing answered) compares False: not within.
        within = (latency["p99"] <= slo_ms and summary.error_rate <= MAX_ERROR_RATE
                  and summary.ok_rps >= CARRIED_SHARE * arrived)
        return cls(summary.rate, summary.ok_rps, summary.rows_per_s, latency["p50"], latency["p99"],
                   summary.error_rate, summary.mean_batch_size, within, arrived)


def measure_open(url: str, model: str, requests: Requests, rate_rps: float, settings: RampSettings,
                 bars: Bars | None, label: str, *, duration_s: float | None = None,
                 seed: int = 0) -> OpenStep:
    """One step at ``rate_rps`` arrivals per second, as long as a ramp step (``settings.step_s``,
    longer until ``min_responses`` answers, at most ``max_step_s``; or ``duration_s``), over at
    most ``settings.max_concurrency`` connections (arrivals beyond wait client-side, and that
    wait counts in their latency). ``seed``: the Poisson draw's (a search gives each step its own,
    so that one draw's luck is not every step's)."""
    from batchserve_planning.load.measure import measure
    from batchserve_planning.load.shared import LoadSpec

    if not rate_rps > 0:
        raise ValueError(f"an open-loop rate must be > 0, not {rate_rps}")
    host, _, port = url.removeprefix("http://").partition(":")
    concurrency = settings.max_concurrency
    spec = LoadSpec(host, int(port), requests.requests, mode="open", rate=rate_rps, concurrency=concurrency,
                    duration_s=duration_s or settings.step_s, warmup_s=settings.warmup_s,
                    timeout_s=settings.timeout_s, min_responses=settings.min_responses,
                    max_duration_s=max(settings.max_step_s, duration_s or 0), seed=seed)
    summary = measure(spec, url, model, requests.rows_per_request,
                      processes=min(settings.processes, concurrency), cpus=settings.load_cpus,
                      bars=bars, label=label)
    return OpenStep.of(summary, settings.slo_ms)


@dataclass(frozen=True)
class Peak:
    rate_rps: float | None
    """The highest offered rate within the SLO; None: not even the lowest tried."""
    steps: list[OpenStep]
    """In the order measured."""
    limit_rps: float | None = None
    """The lowest offered rate outside the SLO; None: every rate tried was within."""
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def peak_rate(url: str, model: str, requests: Requests, settings: RampSettings, start_rps: float,
              bars: Bars | None, label: str, *, max_steps: int = 8, resolution: float = 0.1,
              on_step: Callable[[OpenStep], object] | None = None) -> Peak:
    """The highest arrival rate within the SLO (see the module's docstring), in at most
    ``max_steps`` steps; ``on_step`` sees each step as it is measured."""
    if not start_rps > 0 or max_steps < 1:
        raise ValueError("need a start rate > 0 and at least one step")
    steps: list[OpenStep] = []
    within: float | None = None
    outside: float | None = None
    rate = start_rps
    while len(steps) < max_steps:
        step = measure_open(url, model, requests, rate, settings, bars, f"{label} @ {rate:.3g}/s",
                            seed=len(steps) + 1)
        steps.append(step)
        if on_step is not None:
            on_step(step)
        if step.within_slo:
            within = rate
        else:
            outside = rate
        if outside is None:
            rate *= UP
        elif within is None:
            rate *= DOWN
        elif outside / within - 1 < resolution:
            break
        else:
            rate = (within + outside) / 2
    notes = []
    if within is not None and outside is None:
        notes.append(f"every rate tried was within the SLO (up to {within:.3g}/s): the peak is higher")
    elif within is not None and outside is not None and outside / within - 1 >= resolution:
        notes.append(f"stopped after {max_steps} steps, between {within:.3g}/s and {outside:.3g}/s")
    return Peak(within, steps, outside, notes)
