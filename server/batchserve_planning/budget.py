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

CHECKED_SHARE = 0.3
"""At least this share of the budget is kept, past the sweep, for the final round and the re-run:
their figures are measured until their mean is known (``checked``), which on a busy machine takes
several runs each, and they are what the report states."""

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
    # ramped further), then the final round and the re-run (``checks_s``).
    if elapsed_s + longest_s + checks_s(mean_s, budget_s) > budget_s:
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
    reserve_s = checks_s(sum(o.seconds for o in outcomes) / len(outcomes) if outcomes else 0.0, budget_s)
    return elapsed_s + max(0.0, budget_s - elapsed_s - reserve_s) / searches_left, len(outcomes)


def checks_s(mean_s: float, budget_s: float) -> float:
    """The time kept for the final round and the re-run: each a server and runs three times a
    ramp step's length until their mean is known, two runs on a quiet machine (about 0.7 of a
    candidate each on the 2-core VM); on a busy one more runs, so never less than
    ``CHECKED_SHARE`` of the budget (a second finalist is skipped where it would not fit)."""
    return max(2 * mean_s, CHECKED_SHARE * budget_s)



def finalists_deadline(now_s: float, end_s: float, finalists_left: int, rerun: bool,
                       measured: int = 1) -> float:
    """When the ``measured`` finalists starting at ``now_s`` (in turn, ``finals``) must stop
    starting runs: their share of the time left before ``end_s`` (the budget's end), shared
    equally among them, the finalists after them (``finalists_left`` counts both) and the re-run
    (``rerun``: ``verify`` follows; ``--hardware`` has its open-loop re-run instead)."""
    shares = finalists_left + (1 if rerun else 0)
    return now_s + max(0.0, end_s - now_s) * measured / max(1, shares)
