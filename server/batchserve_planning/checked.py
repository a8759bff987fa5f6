"""The figures a recommendation states, measured until their mean is known.

A ramp step is measured in windows until they agree (``stability``): seconds in all. That ranks
candidates, but it is not enough for the figures a report states and checks (the final round's
and the re-run's). On a machine shared with other work, other work's share of the CPUs drifts
over seconds: on the 2-core VM beside one spinning process per core, consecutive steps on one
diabetes server, each with its windows in agreement, measured 13,200-21,100 rows/s (coefficient of
variation 7.7-8.3%), and a prediction and a re-run of one step each were more than 10% apart in 2
of 11 rounds, the checked figures (below) in 1 of 11, with ratios spread less (standard deviation
0.051 against 0.083; ``benchmarks/step_drift.py``, benchmarks/README.md).

So a checked figure is a series of runs on the same server, each one a step measured as the
ramp measures one (``ramp.measure_step``), until the standard error of their mean throughput is
within ``PRECISION`` of it: at least ``MIN_RUNS`` runs (``MIN_RUNS_CONTENDED`` where other work
took the CPUs), at most ``MAX_RUNS``, and no run more once the next would pass the ``deadline``
the budget gives it. On a quiet machine two runs agree and that is all it costs; on a busy one
the figure takes the runs its noise needs, and says how many and their range. Its throughput is
the runs' mean, its spread their range; its p99 the median of the runs' p99s, and it is within
the SLO when the median of the runs' highest window p99s is (one run of a busy minute does not
undo two that met it, nor does one lucky run make it).

Two runs say little of their own noise: they may agree by chance. Where the same configuration
was measured before (the re-run: the pick's final round), its runs' spread then counts too, pooled
with the new runs' (``pooled_cv``). On the 2-core VM a resnet50 pick's final-round server ranged
18.0-23.9 inferences/s over 8 runs; in the re-run it measured 21.0 and 21.0, a fresh start of the
pick 17.9 and 18.0, each pair "known to 3%" by itself, and the re-run read "did not hold" (0.85x)
on two pairs that the server's own range covered. Pooled with those 8 runs, two runs of either
are not known to 3%: they run on, in turn, until they are, ``MAX_RUNS``, or the deadline.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, replace
from statistics import mean, median, stdev
from typing import Any

from batchserve_planning.ramp import MAX_ERROR_RATE, Step

PRECISION = 0.03
"""A checked figure's mean is known when its standard error is within this share of it: two such
figures of one configuration are then within 10% of each other about 9 times in 10 or more."""
MIN_RUNS = 2
MIN_RUNS_CONTENDED = 3
"""Where a run was contended (``contention``), two runs that agree may agree by chance: three."""
MAX_RUNS = 12
NOT_KNOWN = "not known"
"""The re-run's ``outcome`` (``verdict``) where a figure compared was not known when measuring stopped."""
VERIFY_TOLERANCE = 0.10
"""The re-run's throughput must be within this share of the prediction's."""


def mean_known(values: list[float], precision: float = PRECISION, least: int = MIN_RUNS,
               prior: Sequence[Step] = ()) -> bool:
    """Whether ``values`` (at least ``least``) pin their mean down to ``precision`` of it, their
    spread pooled with that of ``prior``: earlier figures of the same configuration."""
    if len(values) < max(least, MIN_RUNS):
        return False
    centre = mean(values)
    if centre <= 0:
        return False
    spread = pooled_cv([(stdev(values) / centre, len(values)), *_spreads(prior)])
    return _pinned(spread, len(values), least, precision)


def known_by_itself(step: Step) -> bool:
    """Whether a figure's own runs, without any earlier figure's spread, pin its mean down."""
    return _pinned(step.rows_cv, step.runs, least_runs([step]))


def _pinned(cv: float | None, runs: int, least: int, precision: float = PRECISION) -> bool:
    """Whether ``runs`` runs (at least ``least``) of run-to-run spread ``cv`` pin their mean down
    to ``precision`` of it (standard error over the mean)."""
    return cv is not None and runs >= max(least, MIN_RUNS) and cv / math.sqrt(runs) <= precision


def least_runs(steps: Iterable[Step]) -> int:
    """The runs a checked figure takes at least: ``MIN_RUNS_CONTENDED`` where any of ``steps``
    was contended, else ``MIN_RUNS``."""
    return MIN_RUNS_CONTENDED if any(step.contended for step in steps) else MIN_RUNS


def pooled_cv(groups: Sequence[tuple[float, int]]) -> float | None:
    """The run-to-run spread of one configuration from groups of its runs (each group's standard
    deviation over its mean, and its runs): each group's squared relative deviations from its own
    mean, summed over all groups' degrees of freedom. None where no group has two runs."""
    freedom = sum(runs - 1 for _, runs in groups if runs > 1)
    if freedom == 0:
        return None
    return math.sqrt(sum(cv * cv * (runs - 1) for cv, runs in groups if runs > 1) / freedom)


def _spreads(steps: Sequence[Step]) -> list[tuple[float, int]]:
    return [(step.rows_cv, step.runs) for step in steps if step.rows_cv is not None]


def measure_checked(measure: Callable[[], Step], slo_ms: float, deadline: float | None = None,
                    clock: Callable[[], float] = time.monotonic, prior: Sequence[Step] = ()) -> Step:
    """Runs of ``measure()`` until their mean is known (the module's docstring), as one ``Step``."""
    return measure_alternating([measure], slo_ms, deadline, clock, prior)[0]


def measure_alternating(measures: Sequence[Callable[[], Step]], slo_ms: float, deadline: float | None = None,
                        clock: Callable[[], float] = time.monotonic, prior: Sequence[Step] = (),
                        after: Callable[[list[Step]], float] | None = None) -> list[Step]:
    """Checked figures of several servers, measured in turn: a round is one run of each, the order
    reversed every round (so a steady drift of the machine's speed falls on each alike), until
    every figure's mean is known (its spread pooled with ``prior``'s, earlier figures of the
    configuration all of them serve), ``MAX_RUNS`` rounds, or the ``deadline`` (``MIN_RUNS``
    rounds at least), less what measuring ``after`` these figures costs (``after(figures so
    far)``: the final round's back-off, ``finals``). The next round is taken to last as long as
    the longest so far: from their mean, resnet50 runs beside other work, whose rounds vary by
    seconds, ended 3-5 s past a 900-s budget. One figure per measure, in their order."""
    began = clock()
    runs: list[list[Step]] = [[] for _ in measures]
    rounds, longest = 0, 0.0
    while True:
        order = range(len(measures)) if rounds % 2 == 0 else reversed(range(len(measures)))
        for index in order:
            runs[index].append(measures[index]())
        rounds += 1
        if rounds >= MAX_RUNS or all(mean_known([r.rows_per_s for r in mine], least=least_runs(mine),
                                                prior=prior) for mine in runs):
            break
        now = clock()
        longest, began = max(longest, now - began), now
        then = 0.0 if after is None else after([combine(mine, slo_ms, prior) for mine in runs])
        if rounds >= MIN_RUNS and deadline is not None and now + longest + then > deadline:
            break
    return [combine(mine, slo_ms, prior) for mine in runs]


def combine(runs: list[Step], slo_ms: float, prior: Sequence[Step] = ()) -> Step:
    """One figure of ``runs`` of the same step (the module's docstring); ``settled``: its mean is
    known, its spread pooled with ``prior``'s."""
    if len(runs) == 1:
        return runs[0]
    rows = [r.rows_per_s for r in runs]
    errors = mean(r.error_rate for r in runs)
    highs = [r.p99_ms if r.p99_high is None else r.p99_high for r in runs]
    batches = [r.mean_batch_size for r in runs if r.mean_batch_size is not None]
    cvs = [r.latency_cv for r in runs if r.latency_cv is not None]
    others = [r.others_cpu for r in runs if r.others_cpu is not None]
    steals = [r.steal for r in runs if r.steal is not None]
    return replace(
        runs[0], rps=mean(r.rps for r in runs), rows_per_s=mean(rows), p50_ms=median(r.p50_ms for r in runs),
        p99_ms=median(r.p99_ms for r in runs), max_ms=max(r.max_ms for r in runs), error_rate=errors,
        mean_batch_size=mean(batches) if batches else None,
        within_slo=median(highs) <= slo_ms and errors <= MAX_ERROR_RATE,
        stages_ms=_mean_stages(runs), rows_low=min(rows), rows_high=max(rows), p99_high=max(highs),
        windows=sum(r.windows for r in runs), settled=mean_known(rows, least=least_runs(runs), prior=prior),
        runs=len(runs), rows_cv=stdev(rows) / mean(rows) if mean(rows) > 0 else None,
        others_cpu=max(others) if others else None, steal=max(steals) if steals else None,
        latency_cv=median(cvs) if cvs else None, seconds=sum(r.seconds for r in runs))


def verdict(predicted: Step, measured: Step, slo_ms: float, reference: Step | None = None) -> dict[str, Any]:
    """The re-run (``measured``) against the pick's final-round server measured in turn with it
    (``reference``; ``finals``), or, where there was none, against the prediction: it holds when
    its throughput is within ``VERIFY_TOLERANCE`` of that and its p99 within the SLO.
    ``within_noise`` says whether the two differ by no more than their measured noise
    (``stability.beyond_noise``): where it did not hold but is within its noise, this machine
    could not pin the figure down closer. ``drift``: the reference over the prediction, how far the
    machine's speed moved between the final round and the re-run. ``outcome``: "held", "not held",
    or "not known" where the throughput missed while one of the two figures compared was not known
    to ``PRECISION`` (the budget ended, or ``MAX_RUNS``, before it was) and the p99 was within the
    SLO: such a miss is no evidence against the pick (a p99 over the SLO is a miss whatever the
    figures' precision). ``unknown_by_final_round``: a figure compared was not known only because
    its runs' spread was pooled with the final round's (``mean_known``)."""
    from batchserve_planning.stability import beyond_noise

    against = reference or predicted
    ratio = measured.rows_per_s / against.rows_per_s
    within_10pct = abs(ratio - 1) <= VERIFY_TOLERANCE
    p99_ok = measured.p99_ms <= slo_ms and measured.error_rate <= MAX_ERROR_RATE
    holds = within_10pct and p99_ok
    known = measured.settled and against.settled
    outcome = "held" if holds else NOT_KNOWN if p99_ok and not known else "not held"
    return {"concurrency": predicted.concurrency, "predicted_rows_per_s": predicted.rows_per_s,
            "measured_rows_per_s": measured.rows_per_s, "ratio": ratio,
            "ratio_to_prediction": measured.rows_per_s / predicted.rows_per_s,
            "reference": asdict(reference) if reference else None,
            "drift": reference.rows_per_s / predicted.rows_per_s if reference else None,
            "predicted_p99_ms": predicted.p99_ms, "measured_p99_ms": measured.p99_ms,
            "measured_error_rate": measured.error_rate, "stages_ms": measured.stages_ms,
            "throughput_within_10pct": within_10pct, "p99_within_slo": p99_ok,
            "within_noise": beyond_noise(measured.rows_per_s, measured.rows_spread, against.rows_per_s,
                                         against.rows_spread) == 0,
            "holds": holds, "outcome": outcome, "step": asdict(measured),
            "unknown_by_final_round": any(not s.settled and known_by_itself(s) for s in (measured, against))}


def _mean_stages(runs: list[Step]) -> dict[str, float] | None:
    tables = [r.stages_ms for r in runs if r.stages_ms]
    if not tables:
        return None
    return {key: mean(t[key] for t in tables if key in t) for key in tables[0]}
