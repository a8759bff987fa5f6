"""The stability rule (``batchserve_planning/stability.py``): windows repeated until they agree,
the figure's spread, and when two figures differ beyond their noise."""

from __future__ import annotations

import pytest
from batchserve_planning.stability import Figure, Rule, Spread, Window, agree, beyond_noise, repeat, settled


def windows(*rows: float, p99: float = 10.0) -> list[Window]:
    return [Window(r, p99, 100) for r in rows]


def test_windows_agree_when_their_range_is_within_the_tolerance_of_their_mean() -> None:
    assert agree([100, 104, 96], 0.10)
    assert not agree([100, 112, 96], 0.10)  # range 16 > 10% of 102.7
    assert not agree([100, float("nan"), 100], 0.10)  # a window with nothing answered
    assert not agree([], 0.10)


def test_p99_settles_within_the_tolerance_or_on_one_side_of_the_slo() -> None:
    rule = Rule(windows=3, tolerance=0.10)
    steady = [Window(1000, p, 100) for p in (2.0, 3.5, 2.5)]  # p99 jitters by half, far inside 20 ms
    assert not settled(steady, rule)
    assert settled(steady, rule, slo_ms=20)
    straddling = [Window(1000, p, 100) for p in (15.0, 25.0, 18.0)]
    assert not settled(straddling, rule, slo_ms=20)
    assert not settled(windows(1000, 1000), rule)  # fewer windows than the rule asks


def test_repeat_measures_one_window_more_until_the_last_ones_agree() -> None:
    rule = Rule(windows=3, tolerance=0.10, max_windows=6)
    readings = iter([[600.0, 1000.0, 1010.0], [990.0], [1005.0]])  # a stall in the first window
    calls: list[int] = []

    def run(count: int) -> list[Window]:
        calls.append(count)
        values = next(readings)
        assert len(values) == count
        return windows(*values)

    measured = repeat(run, rule)
    assert calls == [3, 1]  # settled after one window more: 1000, 1010, 990
    figure = Figure.of(measured, rule)
    assert figure.settled and figure.windows == 4
    assert figure.rows_per_s == pytest.approx(1000.0)
    assert figure.rows_spread == Spread(990.0, 1010.0)


def test_repeat_stops_at_the_cap_and_says_the_figure_did_not_settle() -> None:
    rule = Rule(windows=3, tolerance=0.05, max_windows=5)
    values = iter([500.0, 1000.0, 700.0, 1200.0, 600.0])
    measured = repeat(lambda count: windows(*(next(values) for _ in range(count))), rule)
    assert len(measured) == 5
    figure = Figure.of(measured, rule)
    assert not figure.settled
    assert figure.rows_spread == Spread(600.0, 1200.0)  # the last three, with their whole range


def test_a_difference_counts_only_beyond_the_noise_of_both() -> None:
    narrow, wide = Spread(990, 1010), Spread(900, 1100)
    assert beyond_noise(1100, narrow, 1000, narrow) == 1
    assert beyond_noise(1100, wide, 1000, narrow) == 0  # 100 apart, noise 100 + 10
    assert beyond_noise(900, narrow, 1000, wide) == 0
    assert beyond_noise(800, narrow, 1000, wide) == -1
    # Two narrow spreads that agree by chance: still nothing under 3% is a difference.
    assert beyond_noise(1020, Spread(1020, 1020), 1000, Spread(1000, 1000)) == 0


def test_a_rule_that_cannot_be_met_is_refused() -> None:
    with pytest.raises(ValueError):
        Rule(windows=4, max_windows=3)
    with pytest.raises(ValueError):
        Rule(tolerance=0)
