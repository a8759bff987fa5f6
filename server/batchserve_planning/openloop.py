"""Open-loop measurement: Poisson arrivals at a rate, latency counted from each arrival, and the
search for the highest rate a server carries within the SLO.

A closed loop (``ramp``) slows its clients down when the server does, so it never sees the
queue that builds when requests keep arriving; an open loop does. One step offers a rate
(``measure_open``); ``peak_rate`` goes up x1.5 from a start while the steps are within the SLO,
down x0.6 while they are not, then bisects between the highest rate within and the lowest
outside until they are ``resolution`` apart.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from batchserve_planning.ramp import MAX_ERROR_RATE, p99_of

if TYPE_CHECKING:
    from collections.abc import Callable

    from batchserve_planning.contention import Contention
    from batchserve_planning.load.inputs import Requests
    from batchserve_planning.load.progress import Bars
    from batchserve_planning.load.results import Summary
    from batchserve_planning.ramp import RampSettings
    from batchserve_planning.stability import Figure

CARRIED_SHARE = 0.95
"""A step within the SLO answers at least this share of what was due in its windows, 2xx (or
within the count's own noise, where that is wider: ``answered_enough``)."""
EDGE_SDS = 3.0
"""How many standard deviations of that noise a shortfall may be and still be noise (a step
within the SLO is then called outside it about once in 700)."""
UP, DOWN = 1.5, 0.6
"""The search's factors before it has a rate on each side of the limit."""


@dataclass(frozen=True)
class OpenStep:
    offered_rps: float
    """The rate asked for (the mean of the Poisson process)."""
    carried_rps: float
    """2xx answers per second: the mean of the agreeing windows (``stability``)."""
    rows_per_s: float
    p50_ms: float
    p99_ms: float
    """From each request's arrival, client-side waiting for a free connection included: the median
    of the agreeing windows' p99s."""
    error_rate: float
    mean_batch_size: float | None
    within_slo: bool
    """The highest p99 of the agreeing windows within the SLO, errors at most ``ramp.MAX_ERROR_RATE``,
    and what arrived answered 2xx (``answered_enough``)."""
    arrived_rps: float
    """Arrivals per second the Poisson draw made in the first run's window (``offered_rps`` give or
    take its noise: about 1/sqrt(arrivals), 6% for 300), what the re-run's ``carried_rps`` is held
    against."""
    p99_high: float | None = None
    carried_low: float | None = None
    carried_high: float | None = None
    windows: int = 1
    settled: bool = True
    others_cpu: float | None = None
    steal: float | None = None

    @classmethod
    def of(cls, summaries: list[Summary], figure: Figure, slo_ms: float,
           contention: Contention | None = None) -> OpenStep:
        first = summaries[0]
        latency = first.latency_ms
        arrived = first.requests / first.window_s
        requests = sum(s.requests for s in summaries)
        errors = sum(s.error_rate * s.requests for s in summaries) / requests if requests else 0.0
        rows_per_request = first.rows_per_request or 1
        carried = figure.rows_per_s / rows_per_request
        p99, p99_high = p99_of(figure, summaries)
        # NaN (nothing answered) compares False: not within.
        within = p99_high <= slo_ms and errors <= MAX_ERROR_RATE and answered_enough(summaries)
        return cls(first.rate, carried, figure.rows_per_s, latency["p50"], p99, errors,
                   first.mean_batch_size, within, arrived, p99_high,
                   figure.rows_spread.low / rows_per_request, figure.rows_spread.high / rows_per_request,
                   figure.windows, figure.settled, contention.others_cpu if contention else None,
                   contention.steal if contention else None)


def answered_enough(summaries: list[Summary]) -> bool:
    """Whether the runs answered, 2xx, what was due in their windows (``Summary.due``): at least
    ``CARRIED_SHARE`` of it, or short of it by no more than ``EDGE_SDS`` standard deviations of
    the count's own noise.

    A window counts the answers it received, which trail the arrivals by their latency; ``due``
    counts the arrivals shifted by the median latency, so that the Poisson counts at the window's
    two ends (``rate * latency`` each, 10% of a few dozen arrivals) do not move the comparison.
    What still does: answers whose latency is off the median (``Summary.jitter_ms``) crossing an
    end (a variance of about ``2 * rate * jitter``), and a batch's answers landing together on
    either side of one (``batch**2 / 12`` each). A server falling behind answers at its own rate
    while ``due`` follows the arrivals, and that gap grows with the window."""
    due = answered = variance = 0.0
    for s in summaries:
        due += s.requests if s.due is None else s.due
        answered += s.ok_rps * s.window_s
        jitter_s = (s.jitter_ms or 0.0) / 1000
        batch = max(1.0, s.mean_batch_size or 1.0)
        variance += 2 * s.requests / s.window_s * jitter_s + batch**2 / 6
    slack = max((1 - CARRIED_SHARE) * due, EDGE_SDS * math.sqrt(variance))
    return answered >= due - slack


def measure_open(url: str, model: str, requests: Requests, rate_rps: float, settings: RampSettings,
                 bars: Bars | None, label: str, *, duration_s: float | None = None,
                 seed: int = 0) -> OpenStep:
    """One step at ``rate_rps`` arrivals per second, as long as a ramp step (``settings.step_s``,
    longer until ``min_responses`` answers, at most ``max_step_s``; or ``duration_s``), in windows
    until they agree (``ramp.measure_windows``), over at most ``settings.max_concurrency``
    connections (arrivals beyond wait client-side, and that wait counts in their latency).
    ``seed``: the Poisson draw's (a search gives each step its own, so that one draw's luck is not
    every step's; a window more draws from ``seed`` + its number)."""
    from batchserve_planning.load.shared import LoadSpec
    from batchserve_planning.ramp import measure_windows

    if not rate_rps > 0:
        raise ValueError(f"an open-loop rate must be > 0, not {rate_rps}")
    host, _, port = url.removeprefix("http://").partition(":")
    concurrency = settings.max_concurrency
    draws = iter(range(seed, seed + 1000))

    def spec_for(share: float) -> LoadSpec:
        return LoadSpec(host, requests.port or int(port), requests.requests, mode="open", rate=rate_rps,
                        protocol=requests.protocol,
                        concurrency=concurrency, duration_s=(duration_s or settings.step_s) * share,
                        warmup_s=settings.warmup_s, timeout_s=settings.timeout_s,
                        min_responses=math.ceil(settings.min_responses * share),
                        max_duration_s=max(settings.max_step_s, duration_s or 0) * share, seed=next(draws))

    summaries, figure, contention = measure_windows(spec_for, url, model, requests, settings, bars, label)
    return OpenStep.of(summaries, figure, settings.slo_ms, contention)


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
              on_step: Callable[[OpenStep], object] | None = None, deadline: float | None = None,
              clock: Callable[[], float] = time.monotonic) -> Peak:
    """The highest arrival rate within the SLO (see the module's docstring), in at most
    ``max_steps`` steps; ``on_step`` sees each step as it is measured. With a ``deadline`` (of
    ``clock``), a step that would end past it (as long as the longest so far) is not started;
    the first always is."""
    if not start_rps > 0 or max_steps < 1:
        raise ValueError("need a start rate > 0 and at least one step")
    steps: list[OpenStep] = []
    within: float | None = None
    outside: float | None = None
    rate = start_rps
    longest_s = 0.0
    out_of_time = False
    while len(steps) < max_steps:
        began = clock()
        if steps and deadline is not None and began + longest_s > deadline:
            out_of_time = True
            break
        step = measure_open(url, model, requests, rate, settings, bars, f"{label} @ {rate:.3g}/s",
                            seed=len(steps) + 1)
        longest_s = max(longest_s, clock() - began)
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
    if out_of_time:
        notes.append(f"stopped at the budget (--budget-s) after {len(steps)} steps")
    if within is not None and outside is None:
        notes.append(f"every rate tried was within the SLO (up to {within:.3g}/s): the peak is higher")
    elif within is not None and outside is not None and outside / within - 1 >= resolution:
        notes.append(f"stopped after {max_steps} steps, between {within:.3g}/s and {outside:.3g}/s")
    return Peak(within, steps, outside, notes)
