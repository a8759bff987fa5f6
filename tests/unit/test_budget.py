"""``recommend --budget-s`` split between the searches of a sweep and the checks after it
(``batchserve_planning/budget.py``)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from batchserve_planning.budget import (
    checked_run_s,
    checks_s,
    finalists_deadline,
    over_budget,
    rerun_s,
    share_of,
)
from batchserve_planning.candidates import Candidate, Outcome
from batchserve_planning.ramp import RampSettings, Step

SETTINGS = RampSettings(slo_ms=100.0)  # step_s 1.5, min_responses 300, max_step_s 8


def took(seconds: float) -> Outcome:
    return Outcome(Candidate(1, 0.0, 1), seconds=seconds)


def step(rps: float, seconds: float, others: float | None = None, windows: int = 3) -> Step:
    return Step(concurrency=4, rps=rps, rows_per_s=rps, p50_ms=1.0, p99_ms=10.0, max_ms=20.0, error_rate=0.0,
                mean_batch_size=None, within_slo=True, seconds=seconds, others_cpu=others, windows=windows)


def searched(start_s: float, *steps: Step) -> Outcome:
    return Outcome(Candidate(1, 0.0, 1), steps=list(steps), seconds=60.0, start_s=start_s)


def test_each_search_gets_an_equal_share_of_what_is_left() -> None:
    assert share_of(0.0, 300.0, 90.0, 0, 3) == ((300.0 - 90.0) / 3, 0)
    assert share_of(120.0, 300.0, 90.0, 12, 2) == (120.0 + (300.0 - 120.0 - 90.0) / 2, 12)
    assert share_of(120.0, 300.0, 250.0, 12, 2) == (120.0, 12)  # the checks need all that is left
    assert share_of(120.0, 300.0, 90.0, 12, 1) is None  # the last search: the rest of the budget


def test_a_search_stops_at_its_share_but_always_runs_its_first_candidate() -> None:
    earlier = [took(50.0), took(50.0)]  # the search before, long candidates
    share = share_of(100.0, 1000.0, 300.0, len(earlier), 3)
    assert share is not None and share[0] == 100.0 + (1000.0 - 100.0 - 300.0) / 3
    assert not over_budget(earlier, 100.0, 1000.0, share, 300.0)  # its first candidate: whatever came before
    mine = [*earlier, took(40.0)]
    assert not over_budget(mine, share[0] - 41.0, 1000.0, share, 300.0)
    assert over_budget(mine, share[0] - 39.0, 1000.0, share, 300.0)  # the next, as long, would end past it
    # without a share, only the whole budget (as with one search), less what the checks keep
    assert not over_budget(mine, share[0] - 39.0, 1000.0, None, 300.0)
    assert not over_budget(mine, 1000.0 - 50.0 - 300.0 - 1.0, 1000.0, None, 300.0)
    assert over_budget(mine, 1000.0 - 50.0 - 300.0 + 1.0, 1000.0, None, 300.0)
    assert over_budget(mine, 1000.0 - 50.0 - 400.0 + 1.0, 1000.0, None, 400.0)


@pytest.mark.parametrize(("rps", "windows", "run_s"), [
    (10_000.0, 3, 4.5 + 4.5),  # fast: first parts 1.5 s and 4.5 s; 4.5 s of the step's 6 were not measuring
    (10_000.0, 6, 3.0 + 9.0),  # three windows more: 3 s of measuring, 9 s in a checked run
    (100.0, 3, 3.0 + 8.0),  # 300 answers take 3 s; 900 take 9 s, cut at 8 s
    (20.0, 3, 8.0),  # slow: both cut at 8 s
])
def test_a_checked_run_scales_a_ramp_steps_measuring_to_its_longer_first_part(
        rps: float, windows: int, run_s: float) -> None:
    assert checked_run_s(step(rps, 6.0, windows=windows), SETTINGS) == pytest.approx(run_s)


def test_the_checks_keep_what_their_least_rounds_cost_as_measured_in_the_search() -> None:
    # servers started in up to 10 s; the longest checked run at a best step: 5 s less its 1.5 s
    # of measuring, and 4.5 s (a fast model; the slow step is not the outcome's best)
    quiet = [searched(8.0, step(10_000.0, 4.0)), searched(10.0, step(50.0, 1.0), step(10_000.0, 5.0))]
    run = 3.5 + 4.5
    # two finalists: two starts, two rounds of two runs, as many again at a lower load (the
    # back-off); the re-run: a start and two rounds of two
    final, rerun = 2 * (10.0 + 2 * 2 * run), 10.0 + 2 * 2 * run
    assert rerun_s(quiet, SETTINGS) == pytest.approx(rerun)
    assert checks_s(quiet, 100.0, SETTINGS, 2, rerun=True) == pytest.approx(final + rerun)
    assert checks_s(quiet, 100.0, SETTINGS, 2, rerun=False) == pytest.approx(final)
    assert checks_s(quiet, 1000.0, SETTINGS, 2, rerun=True) == pytest.approx(0.3 * 1000.0)  # the floor
    # one contended step in the search: three rounds each
    busy = [*quiet, searched(6.0, step(10_000.0, 1.0, others=0.9))]
    assert rerun_s(busy, SETTINGS) == pytest.approx(10.0 + 3 * 2 * run)
    assert checks_s(busy, 100.0, SETTINGS, 2, rerun=True) == pytest.approx(
        2 * (10.0 + 2 * 3 * run) + 10.0 + 3 * 2 * run)
    assert checks_s([], 300.0, SETTINGS, 2, rerun=True) == pytest.approx(90.0)


def test_each_finalist_gets_an_equal_share_of_what_is_left() -> None:
    # two finalists, 90 s left before the end (the re-run's least already taken off): 45 s each
    assert finalists_deadline(210.0, 300.0, 2) == 255.0
    assert finalists_deadline(240.0, 300.0, 1) == 300.0  # the last takes the rest
    assert finalists_deadline(310.0, 300.0, 1) == 310.0  # past the end: no time left
    assert finalists_deadline(210.0, 300.0, 2, measured=2) == 300.0  # two in turn: all of it


def test_the_checks_cost_what_their_runs_at_a_lower_load_would() -> None:
    """A finalist over the SLO at its final load is measured again at the next lower load its ramp
    met the SLO at (``finals``): the re-run may be measured there too. A slow model's runs there
    take longer (all-MiniLM-L6-v2: 6 windows at 2 clients against 3 at 3)."""
    at_two = replace(step(30.0, 17.0, windows=6), concurrency=2)
    at_three = replace(step(53.0, 6.0), concurrency=3)
    over = replace(step(54.0, 6.0), concurrency=4, within_slo=False)
    minilm = [searched(7.0, replace(step(30.0, 17.0, windows=6), concurrency=1), at_two, at_three, over)]
    # a run at 3 clients: 900 answers at 53/s, cut at 8 s (and 6 - 300/53 s not measuring); at 2:
    # 300 answers at 30/s cut at 8 s, two first parts of 8 s, and 17 - 16 s not measuring
    assert checked_run_s(at_three, SETTINGS) < checked_run_s(at_two, SETTINGS) == pytest.approx(1.0 + 2 * 8.0)
    assert rerun_s(minilm, SETTINGS) == pytest.approx(7.0 + 2 * 2 * (1.0 + 2 * 8.0))
    # the lowest load has no lower one: a finalist at 1 client costs its own runs only
    alone = [searched(7.0, replace(step(30.0, 5.0), concurrency=1))]
    assert rerun_s(alone, SETTINGS) == pytest.approx(7.0 + 2 * 2 * checked_run_s(alone[0].steps[0], SETTINGS))
