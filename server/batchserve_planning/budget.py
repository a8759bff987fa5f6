"""``recommend --budget-s``: when a sweep starts no more candidates, and each search's share of it.

A sweep searches each device, dtype and runtime in turn (``Sweep.search``); with more than one,
each gets an equal share of the time left when it starts (less the final round's and the
re-run's), so that the first searched cannot spend the budget of the others; one that ends
early (``--max-drift`` left it out, or its ramps were short) leaves its time to those after it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from batchserve_planning.candidates import Outcome

Share = tuple[float, int]
"""When a search must end (seconds into the run), and the index of its first outcome."""


def over_budget(outcomes: list[Outcome], elapsed_s: float, budget_s: float, share: Share | None) -> bool:
    """Whether the next candidate would not fit: in the budget with the checks after the sweep, or
    in its search's ``share`` (past the search's first candidate, which always runs)."""
    if not outcomes:
        return False
    mean_s = sum(o.seconds for o in outcomes) / len(outcomes)
    longest_s = max(o.seconds for o in outcomes)
    # The next candidate (as long as the longest so far: the ones left are the larger batches,
    # ramped further), then the final round and the re-run: each a server and one step three
    # times a ramp step's length, measured until its windows agree (~0.7 of a candidate each,
    # as measured on a shared 2-core machine; a second finalist is skipped where it would not fit).
    if elapsed_s + longest_s + 2 * mean_s > budget_s:
        return True
    if share is None:
        return False
    end_s, first = share
    mine = outcomes[first:]
    return bool(mine) and elapsed_s + max(o.seconds for o in mine) > end_s


def share_of(elapsed_s: float, budget_s: float, outcomes: list[Outcome], searches_left: int) -> Share | None:
    """The share of the search starting now, with ``searches_left`` (itself included) to go; None
    for the last one (the rest of the budget)."""
    if searches_left <= 1:
        return None
    reserve_s = 2 * sum(o.seconds for o in outcomes) / len(outcomes) if outcomes else 0.0
    return elapsed_s + max(0.0, budget_s - elapsed_s - reserve_s) / searches_left, len(outcomes)
