"""``recommend --budget-s``: when a sweep starts no more candidates, and each part's share of it.

A sweep searches each device, dtype and runtime in turn (``Sweep.search``); with more than one,
each gets an equal share of the time left when it starts (less what the checks after the sweep
need, ``checks_s``), so that the first searched cannot spend the budget of the others; one that
ends early (``--max-drift`` left it out, or its ramps were short) leaves its time to those after it.

The checks (the final round and the re-run, ``finals``) are measured in runs until their means
are known (``checked``): at least ``MIN_RUNS`` rounds, ``MIN_RUNS_CONTENDED`` where other work took
the CPUs, each after a fresh server start; a finalist over the SLO at its final load is measured
as many rounds again at a lower load (``final_loads``). What that costs at least is known from the
search: how long its servers took to start, and how long its steps at those loads took, scaled to
a checked run's length.
The sweep keeps that (or ``CHECKED_SHARE`` of the budget, the more). Of what is left when the
final round starts, the final round leaves the re-run as many rounds as it takes itself
(``rerun_reserve_s``), and never less than the re-run's least (``rerun_s``): on the 2-core VM
beside a CPU hog, a split that gave the re-run a third left it two rounds, measured past the
budget's end (up to 21 s over 600) after a slow start; one that left it only its least gave the
final round up to 8 rounds and the re-run 3, in 4 of 9 diabetes runs (2026-12-07), and the re-run's
two figures are what its verdict compares.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from batchserve_planning.final_loads import checked_steps

if TYPE_CHECKING:
    from batchserve_planning.candidates import Outcome
    from batchserve_planning.ramp import RampSettings, Step

CHECKED_SHARE = 0.3
"""At least this share of the budget is kept, past the sweep, for the final round and the re-run:
their figures are measured until their mean is known (``checked``), which on a busy machine takes
several runs each, and they are what the report states."""

Share = tuple[float, int]
"""When a search must end (seconds into the run), and the index of its first outcome."""


def over_budget(outcomes: list[Outcome], elapsed_s: float, budget_s: float, share: Share | None,
                reserve_s: float) -> bool:
    """Whether the next candidate would not fit: in the budget with the checks after the sweep
    (``reserve_s``, ``checks_s``), or in its search's ``share`` (past the search's first
    candidate, which always runs)."""
    if not outcomes:
        return False
    # The next candidate is as long as the longest so far: the ones left are the larger batches,
    # ramped further.
    if elapsed_s + max(o.seconds for o in outcomes) + reserve_s > budget_s:
        return True
    if share is None:
        return False
    end_s, first = share
    mine = outcomes[first:]
    return bool(mine) and elapsed_s + max(o.seconds for o in mine) > end_s


def share_of(elapsed_s: float, budget_s: float, reserve_s: float, first: int,
             searches_left: int) -> Share | None:
    """The share of the search starting now (its first outcome at index ``first``), with
    ``searches_left`` (itself included) to go and ``reserve_s`` kept for the checks; None for the
    last one (the rest of the budget)."""
    if searches_left <= 1:
        return None
    return elapsed_s + max(0.0, budget_s - elapsed_s - reserve_s) / searches_left, first


def checks_s(outcomes: list[Outcome], budget_s: float, settings: RampSettings, finalists: int,
             rerun: bool) -> float:
    """The time kept for the checks after the sweep: ``finalists`` servers started and measured
    in turn for the least rounds (``least_rounds``), and as many again at a lower load (the
    back-off, ``finals``: where a finalist is over the SLO at its final load), and the re-run's
    least (``rerun_s``) where one follows; never less than ``CHECKED_SHARE`` of the budget (figures
    on a busy machine take more rounds than the least). Before the back-off and its lower loads
    counted, the checks of 11 runs on the 2-core VM (2026-12-07) took up to 1.6x what this kept at
    the sweep's end, and 4 of the 11 ended 1-31 s past their budget."""
    if not outcomes:
        return CHECKED_SHARE * budget_s
    final = finalists * (start_s(outcomes) + 2 * least_rounds(outcomes) * run_s(outcomes, settings))
    return max(CHECKED_SHARE * budget_s, final + (rerun_s(outcomes, settings) if rerun else 0.0))


def rerun_s(outcomes: list[Outcome], settings: RampSettings) -> float:
    """The least the re-run costs: a server start, and the least rounds of two runs (the fresh
    server and the pick's own, in turn), each as long as the longest of ``outcomes``' would be."""
    return start_s(outcomes) + least_rounds(outcomes) * 2 * run_s(outcomes, settings)


def rerun_reserve_s(outcomes: list[Outcome], settings: RampSettings, left_s: float) -> float:
    """What the final round of ``outcomes`` (the finalists) leaves the re-run of the ``left_s``
    seconds left when it starts: as many rounds as it takes itself. A final round's round is a run
    of each finalist, the re-run's two runs (the fresh server and the pick's own, in turn) and
    a server start before them; so the re-run's share is 2 / (finalists + 2), and at least its
    least (``rerun_s``)."""
    share = 2 / (len(outcomes) + 2)
    return max(rerun_s(outcomes, settings), share * max(0.0, left_s))


def start_s(outcomes: list[Outcome]) -> float:
    """The longest server start measured among ``outcomes``."""
    return max((o.start_s for o in outcomes), default=0.0)


def run_s(outcomes: list[Outcome], settings: RampSettings) -> float:
    """The longest checked run among ``outcomes``, at each one's loads the checks may measure it
    at (``final_loads.checked_steps``: its final load, and the lower one it is measured again at where
    it is over the SLO there)."""
    return max((checked_run_s(s, settings) for o in outcomes for s in checked_steps(o)), default=0.0)


def least_rounds(outcomes: list[Outcome]) -> int:
    """The rounds a checked figure takes at least: ``MIN_RUNS_CONTENDED`` where any step of the
    search was contended (the machine is busy; so will the checks' runs be), else ``MIN_RUNS``."""
    from batchserve_planning.checked import least_runs

    return least_runs(s for o in outcomes for s in o.steps)


def checked_run_s(step: Step, settings: RampSettings) -> float:
    """How long one run of a checked figure at ``step``'s load takes, from what the step took
    (``step.seconds``). A checked run's first part is three times a ramp step's (``finals``: three
    times ``step_s`` and ``min_responses``, within ``max_step_s`` or that), and each window more a
    share of it as in the ramp. So the step's measuring (its first part at the step's request rate
    and its further windows) is scaled by the ratio of the two first parts; the rest of its
    seconds (the warm-up, the load generator's start) is not: scaling that too put diabetes's
    checked runs at 1.1-2.8x the length they took on the 2-core VM (now 1.0-2.1x)."""
    rate = max(step.rps, 1e-9)
    ramp_first = min(max(settings.step_s, settings.min_responses / rate), settings.max_step_s)
    checked_first = min(max(3 * settings.step_s, 3 * settings.min_responses / rate),
                        max(settings.max_step_s, 3 * settings.step_s))
    windows = step.windows / settings.rule.windows
    fixed = max(0.0, step.seconds - ramp_first * windows)
    return fixed + checked_first * windows


def finalists_deadline(now_s: float, end_s: float, finalists_left: int, measured: int = 1) -> float:
    """When the ``measured`` finalists starting at ``now_s`` (in turn, ``finals``) must stop
    starting runs: their share of the time left before ``end_s`` (the budget's end, less the
    re-run's ``rerun_s`` where one follows), shared equally among them and the finalists after
    them (``finalists_left`` counts both)."""
    return now_s + max(0.0, end_s - now_s) * measured / max(1, finalists_left)
