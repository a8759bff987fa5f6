"""The load ramp that measures one candidate of a ``recommend`` sweep, and its steps.

The ramp doubles the number of concurrent clients (1, 2, 4, ...) until the p99
latency leaves the SLO, errors appear, or throughput stops growing by more than its
measured noise (``stability``) for two steps (a plateau: more clients then only add
queueing), then tries once between the last level inside the SLO and the first outside
it. A step lower than the best so far by more than the noise is measured again before
it counts: in a closed loop one more doubling of clients does not lose throughput unless
something else took the CPUs. A candidate's capacity is the highest throughput of a step
inside the SLO.

Every step is measured in windows until they agree (``stability.repeat``): its throughput
is their mean with their range, and it is within the SLO only if the highest p99 of those
windows is, so that no candidate is placed on one lucky window. Each run of a step also
records how much of the machine other work took (``contention``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from batchserve_planning.stability import Figure, Rule, Spread, beyond_noise

if TYPE_CHECKING:
    from batchserve_planning.contention import Contention
    from batchserve_planning.load.inputs import Requests
    from batchserve_planning.load.progress import Bars
    from batchserve_planning.load.results import Summary

MAX_ERROR_RATE = 0.001
"""Share of non-2xx answers a step may have and still count as within the SLO."""
FLAT_STEPS = 2
"""Steps in a row without growth beyond the noise that end a ramp."""
STALE_STEPS = 4
"""Steps in a row without growth of any kind (within the noise, or lower even when measured
again) that end a ramp."""


@dataclass(frozen=True)
class Step:
    concurrency: int
    rps: float
    rows_per_s: float
    """The mean of the agreeing windows."""
    p50_ms: float
    p99_ms: float
    """The median of the agreeing windows' p99s."""
    max_ms: float
    error_rate: float
    mean_batch_size: float | None
    within_slo: bool
    """The highest p99 of the agreeing windows within the SLO, errors at most ``MAX_ERROR_RATE``."""
    stages_ms: dict[str, float] | None = None
    """Where a successful request's time went, server side (``stages.py``)."""
    rows_low: float | None = None
    rows_high: float | None = None
    """The range of the windows' throughputs (None: a single measurement, no spread)."""
    p99_high: float | None = None
    windows: int = 1
    """Windows measured in all."""
    settled: bool = True
    """Whether the windows agreed within the stability rule's cap."""
    others_cpu: float | None = None
    """Other processes' share of the machine's CPUs while the step ran (the worst of its runs)."""
    steal: float | None = None
    latency_cv: float | None = None
    """Spread of the latencies, robust: (p90 - p10) / (2.56 x p50), ~ the coefficient of variation."""
    runs: int = 1
    """Steps measured on the same server whose mean this is (``checked``: the final round's and
    the re-run's); 1 for a ramp step."""
    seconds: float = 0.0
    """The wall time its measurement took, its runs' warm-ups included (``budget`` plans by it)."""
    rows_cv: float | None = None
    """Its runs' throughputs' standard deviation over their mean, where it has several runs
    (``checked``): how far one run of this configuration strays from another here."""

    @property
    def rows_spread(self) -> Spread:
        return Spread(self.rows_per_s if self.rows_low is None else self.rows_low,
                      self.rows_per_s if self.rows_high is None else self.rows_high)

    @property
    def contended(self) -> bool:
        from batchserve_planning.contention import Contention

        return self.others_cpu is not None and Contention(self.others_cpu, self.steal or 0.0).contended

    @classmethod
    def of(cls, summaries: list[Summary], figure: Figure, slo_ms: float,
           contention: Contention | None = None) -> Step:
        """A step from its runs (the first: ``windows`` long; the rest, one window each) and the
        windows' verdict."""
        first = summaries[0]
        requests = sum(s.requests for s in summaries)
        errors = sum(s.error_rate * s.requests for s in summaries) / requests if requests else 0.0
        latency = first.latency_ms
        p99, p99_high = p99_of(figure, summaries)
        within = p99_high <= slo_ms and errors <= MAX_ERROR_RATE
        rows_per_request = first.rows_per_request or 1
        return cls(first.concurrency, figure.rows_per_s / rows_per_request, figure.rows_per_s,
                   latency["p50"], p99, max(s.latency_ms["max"] for s in summaries), errors,
                   first.mean_batch_size, within, first.stages_ms, figure.rows_spread.low,
                   figure.rows_spread.high, p99_high, figure.windows, figure.settled,
                   contention.others_cpu if contention else None, contention.steal if contention else None,
                   robust_cv(latency))


def p99_of(figure: Figure, summaries: list[Summary]) -> tuple[float, float]:
    """The figure's p99 and the highest of its windows'; where no window had a request of its own
    (a slow model in short windows), the runs' own p99s, the highest of them as the high."""
    if figure.p99_ms == figure.p99_ms:
        return figure.p99_ms, figure.p99_spread.high
    pooled = [s.latency_ms["p99"] for s in summaries if s.latency_ms["p99"] == s.latency_ms["p99"]]
    return (pooled[0], max(pooled)) if pooled else (float("nan"), float("nan"))


def robust_cv(latency: dict[str, float]) -> float | None:
    """(p90 - p10) / (2.56 x p50): the coefficient of variation of a normal spread, not moved by a
    few stalls as the standard deviation is."""
    if "p10" not in latency or not latency["p50"] > 0:
        return None
    return (latency["p90"] - latency["p10"]) / (2.563 * latency["p50"])


@dataclass(frozen=True)
class RampSettings:
    slo_ms: float
    max_concurrency: int = 512
    step_s: float = 1.5
    """Shortest first run of a step (its ``rule.windows`` windows together)..."""
    min_responses: int = 300
    """...which goes on until this many answers..."""
    max_step_s: float = 8.0
    """...for at most this long. A window more, where they disagree, is a share of these."""
    warmup_s: float = 0.3
    timeout_s: float = 30.0
    rows_per_request: int = 1
    processes: int = 1
    load_cpus: set[int] | None = None
    rule: Rule = field(default_factory=Rule)
    """When a step's windows agree (``stability``)."""


Spec = Callable[[float], Any]
"""A step's load for a run of ``share`` of its first run's length (1 for the first): a LoadSpec."""


def measure_windows(spec_for: Spec, url: str, model: str, requests: Requests, settings: RampSettings,
                    bars: Bars | None, label: str) -> tuple[list[Summary], Figure, Contention | None]:
    """One figure, measured in windows until they settle (``stability.repeat``): the runs'
    summaries, the windows' verdict, and the worst contention of the runs."""
    from batchserve_planning.contention import Probe, worst
    from batchserve_planning.load.measure import measure
    from batchserve_planning.stability import repeat

    rule = settings.rule
    summaries: list[Summary] = []
    readings = []

    def run(count: int) -> list[Any]:
        spec = spec_for(count / rule.windows)
        probe = Probe()
        probe.start()
        name = label if not summaries else f"{label} (window {len(summaries) + rule.windows})"
        summary = measure(spec, url, model, requests.rows_per_request,
                          processes=min(settings.processes, spec.concurrency), cpus=settings.load_cpus,
                          bars=bars, label=name, windows=count)
        readings.append(probe.stop())
        summaries.append(summary)
        return list(summary.windows)

    windows = repeat(run, rule, settings.slo_ms)
    return summaries, Figure.of(windows, rule, settings.slo_ms), worst(readings)


def measure_step(url: str, model: str, requests: Requests, concurrency: int, settings: RampSettings,
                 bars: Bars | None, label: str, *, duration_s: float | None = None,
                 min_responses: int | None = None) -> Step:
    """Closed loop at ``concurrency`` clients, in windows (``measure_windows``); ``duration_s`` and
    ``min_responses`` for the first run, else the settings'."""
    from batchserve_planning.load.shared import LoadSpec

    host, _, port = url.removeprefix("http://").partition(":")
    first_s = duration_s or settings.step_s
    answers = settings.min_responses if min_responses is None else min_responses
    longest = max(settings.max_step_s, duration_s or 0)

    def spec_for(share: float) -> LoadSpec:
        return LoadSpec(host, requests.port or int(port), requests.requests, mode="closed",
                        protocol=requests.protocol, concurrency=concurrency,
                        duration_s=first_s * share, warmup_s=settings.warmup_s, timeout_s=settings.timeout_s,
                        min_responses=math.ceil(answers * share), max_duration_s=longest * share)

    began = time.monotonic()
    summaries, figure, contention = measure_windows(spec_for, url, model, requests, settings, bars, label)
    return replace(Step.of(summaries, figure, settings.slo_ms, contention), seconds=time.monotonic() - began)


def ramp(url: str, model: str, requests: Requests, settings: RampSettings, bars: Bars | None,
         label: str, on_step: Any = None, fill_clients: int = 1) -> list[Step]:
    """Steps of increasing concurrency (see the module's docstring); ``fill_clients``: see ``climb``."""

    def measure(concurrency: int) -> Step:
        step = measure_step(url, model, requests, concurrency, settings, bars,
                            f"{label} @ {concurrency} clients")
        if on_step is not None:
            on_step(step)
        return step

    return climb(measure, settings, fill_clients)


def trend(step: Step, best: Step) -> int:
    """1: ``step`` carried more than ``best`` beyond their noise; -1: less; 0: within it."""
    return beyond_noise(step.rows_per_s, step.rows_spread, best.rows_per_s, best.rows_spread)


def busier(step: Step, best: Step) -> bool:
    """Whether other work took more of the machine during ``step`` than during ``best``, by more
    than ``contention.BUSY_SHARE``."""
    from batchserve_planning.contention import BUSY_SHARE

    if step.others_cpu is None or best.others_cpu is None:
        return False
    return step.others_cpu - best.others_cpu > BUSY_SHARE


def climb(measure: Callable[[int], Step], settings: RampSettings, fill_clients: int = 1) -> list[Step]:
    """The ramp's decisions over ``measure(clients)`` (see the module's docstring). No plateau
    ends it before ``fill_clients`` clients (the candidate's batch size x its workers x instances:
    fewer clients cannot fill its batches, so its throughput has not shown its limit yet), and a
    step without growth that ran with more of the CPUs taken by other work than the best so far
    (``contention.BUSY_SHARE`` more) is measured again before it counts."""
    steps: list[Step] = []

    def run(concurrency: int) -> Step:
        step = measure(concurrency)
        steps.append(step)
        return step

    concurrency, last_ok, flat, stale = 1, 0, 0, 0
    best: Step | None = None
    while concurrency <= settings.max_concurrency:
        step = run(concurrency)
        if not step.within_slo and (step.contended or (last_ok and steps[-2].p99_ms < settings.slo_ms / 2)):
            # Outside the SLO while other work took the CPUs, or from well inside it to outside in
            # one doubling: on a shared machine that is often a stall elsewhere, so measure that
            # level once more before believing it.
            step = run(concurrency)
        if best is not None and step.within_slo and (trend(step, best) < 0 or (
                trend(step, best) == 0 and busier(step, best))):
            step = run(concurrency)  # lower beyond the noise, or flat on a busier machine: measure again
        if not step.within_slo:
            break
        last_ok = concurrency
        if best is not None:
            direction = trend(step, best)
            # Within the noise says nothing where a step's windows did not agree: not flat (the
            # stale count still caps a ramp that never grows beyond its noise).
            known = step.settled and best.settled
            flat, stale = (0, 0) if direction > 0 else (flat + (direction == 0 and known), stale + 1)
            if concurrency >= fill_clients and (flat >= FLAT_STEPS or stale >= STALE_STEPS):
                return steps
        if best is None or step.rows_per_s > best.rows_per_s:
            best = step
        concurrency *= 2
    middle = (last_ok + concurrency) // 2
    if last_ok and concurrency <= settings.max_concurrency and last_ok < middle < concurrency:
        run(middle)
    return steps
