"""The loads the final round measures a finalist at (``finals``): its final load, and the next
lower one its ramp met the SLO at, where it is over the SLO at the first (the back-off). What the
checks will cost is estimated from the ramp's steps at these loads (``budget.run_s``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from batchserve_planning.candidates import Outcome
    from batchserve_planning.ramp import Step


PLATEAU_SHARE = 0.97
"""Steps with at least this share of a candidate's best throughput are on its plateau."""


def final_clients(outcome: Outcome) -> int:
    """The clients a candidate is measured again at: its best step's; with more than one worker,
    the most clients on its plateau (within 3% of its best, inside the SLO). The kernel spreads
    connections over SO_REUSEPORT workers by a hash of each connection, so with as few as 4 a
    fresh server has a 1 in 8 chance of getting all of them in one worker of two."""
    best = outcome.best
    assert best is not None
    if outcome.candidate.workers == 1:
        return best.concurrency
    plateau = [s.concurrency for s in outcome.steps if s.within_slo
               and s.rows_per_s >= PLATEAU_SHARE * best.rows_per_s]
    return max(plateau)


def checked_steps(outcome: Outcome) -> list[Step]:
    """The ramp's steps at the loads the final round may measure ``outcome`` at: its final load
    (``final_clients``) and, where it is over the SLO there, the next lower load its ramp met the
    SLO at (the back-off's). What the checks cost is estimated from these (``budget.run_s``): a
    lower load's runs may take longer (all-MiniLM-L6-v2 on the 2-core VM: the re-run, at the 2
    clients it was backed off to, took 17.8 s a run, where its final load of 3 clients put a run at
    8.5 s), and 11 of 22 finalists in 11 runs on the 2-core VM were measured again at a lower load
    (2026-12-07)."""
    clients = final_clients(outcome) if outcome.best is not None else None
    loads = [clients, lower_load(outcome, clients)] if clients is not None else []
    return [max((s for s in outcome.steps if s.within_slo and s.concurrency == load),
                key=lambda s: s.rows_per_s) for load in loads if load is not None]


def lower_load(outcome: Outcome, clients: int) -> int | None:
    """The most clients below ``clients`` at which ``outcome``'s ramp met the SLO, if any."""
    met = [s.concurrency for s in outcome.steps if s.within_slo and s.concurrency < clients]
    return max(met, default=None)
