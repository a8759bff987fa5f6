"""Measurements that know their noise: windows repeated until they agree, and their spread.

One figure of a ``recommend`` search (a ramp step, a finalist, an open-loop step) is measured in
windows, as Triton's perf_analyzer does: a run of ``Rule.windows`` windows, then one window more
at a time until the last ``Rule.windows`` agree (throughput within ``Rule.tolerance`` of their
mean, and p99 either within it too or on one side of the SLO in every window, since then the
decision it feeds is the same), or until ``Rule.max_windows``. The figure is the mean of the
agreeing windows and carries their range (``Spread``); one that did not settle says so.

Two figures differ only when they differ by more than their noise (``beyond_noise``): the half
ranges of both added, and never less than ``NOISE_FLOOR`` of the larger (two windows that agree
by chance do not make a difference of 1% real).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from statistics import mean, median

TOLERANCE = 0.10
"""Consecutive windows agree when their range is within this share of their mean."""
WINDOWS = 3
MAX_WINDOWS = 6
NOISE_FLOOR = 0.03
"""Two figures closer than this share of the larger are the same, however narrow their spreads."""


@dataclass(frozen=True)
class Rule:
    windows: int = WINDOWS
    """Consecutive windows that must agree."""
    tolerance: float = TOLERANCE
    max_windows: int = MAX_WINDOWS
    """The cap: windows measured at most for one figure."""

    def __post_init__(self) -> None:
        if self.windows < 1 or self.max_windows < self.windows or not 0 < self.tolerance < 1:
            raise ValueError(f"a stability rule needs 1 <= windows <= max_windows and a tolerance in (0, 1): "
                             f"{self}")


@dataclass(frozen=True)
class Window:
    """One window of a measurement."""

    rows_per_s: float
    """2xx answers (in rows) that arrived in the window, per second."""
    p99_ms: float
    """Over the requests that started (or arrived, open loop) in the window; NaN: none answered."""
    requests: int


@dataclass(frozen=True)
class Spread:
    """A figure's range over the windows it is the mean of."""

    low: float
    high: float

    def half_width(self) -> float:
        return (self.high - self.low) / 2


def agree(values: list[float], tolerance: float) -> bool:
    """Whether ``values`` lie within ``tolerance`` of their mean (their range, against the mean)."""
    if not values or any(v != v for v in values):  # NaN: nothing answered in a window
        return False
    centre = mean(values)
    if centre == 0:
        return max(values) == 0
    return (max(values) - min(values)) <= tolerance * abs(centre)


def settled(windows: list[Window], rule: Rule, slo_ms: float | None = None) -> bool:
    """Whether the last ``rule.windows`` windows agree (see the module's docstring)."""
    if len(windows) < rule.windows:
        return False
    last = windows[-rule.windows:]
    if not agree([w.rows_per_s for w in last], rule.tolerance):
        return False
    p99s = [w.p99_ms for w in last]
    if agree(p99s, rule.tolerance):
        return True
    if slo_ms is None or any(p != p for p in p99s):
        return False
    return all(p <= slo_ms for p in p99s) or all(p > slo_ms for p in p99s)


@dataclass(frozen=True)
class Figure:
    """The windows' verdict: the mean of the agreeing (or, unsettled, the last) windows."""

    rows_per_s: float
    rows_spread: Spread
    p99_ms: float
    """The median of the windows' p99s."""
    p99_spread: Spread
    windows: int
    """Windows measured in all."""
    settled: bool

    @classmethod
    def of(cls, windows: list[Window], rule: Rule, slo_ms: float | None = None) -> Figure:
        if not windows:
            raise ValueError("no windows measured")
        last = windows[-rule.windows:]
        rows = [w.rows_per_s for w in last]
        p99s = [w.p99_ms for w in last if w.p99_ms == w.p99_ms]
        p99 = median(p99s) if p99s else float("nan")
        p99_spread = Spread(min(p99s), max(p99s)) if p99s else Spread(float("nan"), float("nan"))
        return cls(mean(rows), Spread(min(rows), max(rows)), p99, p99_spread, len(windows),
                   settled(windows, rule, slo_ms))


def noise(a: float, a_spread: Spread, b: float, b_spread: Spread) -> float:
    """How far apart two figures may be and still be the same."""
    return max(a_spread.half_width() + b_spread.half_width(), NOISE_FLOOR * max(abs(a), abs(b)))


def beyond_noise(a: float, a_spread: Spread, b: float, b_spread: Spread) -> int:
    """1 if ``a`` is above ``b`` by more than their noise, -1 if below, 0 if within it."""
    gap = noise(a, a_spread, b, b_spread)
    if a - b > gap:
        return 1
    if b - a > gap:
        return -1
    return 0


def repeat(run: Callable[[int], list[Window]], rule: Rule, slo_ms: float | None = None) -> list[Window]:
    """Windows from ``run(count)`` (a run of ``count`` windows): ``rule.windows`` first, then one
    at a time until they settle or ``rule.max_windows`` were measured."""
    windows = list(run(rule.windows))
    while not settled(windows, rule, slo_ms) and len(windows) < rule.max_windows:
        windows += run(1)
    return windows
