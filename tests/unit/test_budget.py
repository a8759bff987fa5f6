"""``recommend --budget-s`` split between the searches of a sweep (``batchserve_planning/budget.py``)."""

from __future__ import annotations

from batchserve_planning.budget import finalists_deadline, over_budget, share_of
from batchserve_planning.candidates import Candidate, Outcome


def took(seconds: float) -> Outcome:
    return Outcome(Candidate(1, 0.0, 1), seconds=seconds)


def test_each_search_gets_an_equal_share_of_what_is_left() -> None:
    assert share_of(0.0, 300.0, [], 3) == ((300.0 - 90.0) / 3, 0)  # 30% kept for the checks
    # 120 s in, two searches to go, candidates of 10 s: 30% of the budget (90 s, more than two
    # candidates' 20 s) kept for the final round and re-run
    done = [took(10.0)] * 12
    assert share_of(120.0, 300.0, done, 2) == (120.0 + (300.0 - 120.0 - 90.0) / 2, 12)
    # candidates of 60 s: two of them (120 s), more than 30%
    assert share_of(120.0, 300.0, [took(60.0)] * 2, 2) == (120.0 + (300.0 - 120.0 - 120.0) / 2, 2)
    assert share_of(120.0, 300.0, done, 1) is None  # the last search: the rest of the budget


def test_a_search_stops_at_its_share_but_always_runs_its_first_candidate() -> None:
    earlier = [took(50.0), took(50.0)]  # the search before, long candidates
    share = share_of(100.0, 1000.0, earlier, 3)
    assert share is not None and share[0] == 100.0 + (1000.0 - 100.0 - 300.0) / 3
    assert not over_budget(earlier, 100.0, 1000.0, share)  # its first candidate: whatever came before
    mine = [*earlier, took(40.0)]
    assert not over_budget(mine, share[0] - 41.0, 1000.0, share)
    assert over_budget(mine, share[0] - 39.0, 1000.0, share)  # the next, as long, would end past it
    # without a share, only the whole budget (as with one search)
    assert not over_budget(mine, share[0] - 39.0, 1000.0, None)
    assert not over_budget(mine, 1000.0 - 50.0 - 300.0 - 1.0, 1000.0, None)
    assert over_budget(mine, 1000.0 - 50.0 - 300.0 + 1.0, 1000.0, None)  # 30% kept for the checks


def test_each_finalist_gets_an_equal_share_of_what_is_left_with_the_rerun_counted() -> None:
    # two finalists and the re-run after them, 90 s left: the first may run 30 s
    assert finalists_deadline(210.0, 300.0, 2, rerun=True) == 240.0
    # the second, started at 240 s: half of the 60 s left, the other half the re-run's
    assert finalists_deadline(240.0, 300.0, 1, rerun=True) == 270.0
    # --hardware: no re-run share (its check is the open-loop re-run), the last finalist takes the rest
    assert finalists_deadline(210.0, 300.0, 2, rerun=False) == 255.0
    assert finalists_deadline(240.0, 300.0, 1, rerun=False) == 300.0
    assert finalists_deadline(310.0, 300.0, 1, rerun=True) == 310.0  # past the budget: no time left
    # two finalists measured in turn, the re-run after them: two thirds of what is left
    assert finalists_deadline(210.0, 300.0, 2, rerun=True, measured=2) == 270.0
    assert finalists_deadline(210.0, 300.0, 2, rerun=False, measured=2) == 300.0
