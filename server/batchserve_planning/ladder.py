"""The ladder of batch sizes a ``recommend`` search climbs first (``Sweep.search``): max_batch_size
1, 2, 4, ... up to a cap (``batch_cap``), one worker, the first wait and instance count, stopping
early, with the reason in the report's decisions (``stop``), where a larger cap could not help:

- *exactly*, where the last ramp never had more rows waiting than its cap (``rows_waiting``): a
  larger cap would split no batch at any load measured, so it would measure the same server;
- *by measurement*, where the last size carried no more than the best before it beyond their
  measured noise (``ramp.trend``, the rule that stops adding workers): the surface has flattened,
  and the budget goes to the workers, waits and instances instead. On the 2-core VM diabetes's
  batch 16, 32 and 64 measured within each other's noise run after run (21,300-25,200/s) and took
  the budget the 2-worker layouts needed (40,200-42,300/s).
"""

from __future__ import annotations

import argparse
from typing import Any

from batchserve_planning.candidates import Outcome


def batch_sizes(cap: int) -> list[int]:
    sizes = [1]
    while sizes[-1] * 2 <= cap:
        sizes.append(sizes[-1] * 2)
    return sizes


def batch_cap(args: argparse.Namespace, base: dict[str, Any]) -> int:
    """The largest max_batch_size a sweep tries: ``--max-batch-cap``, else 2x the configured one, 8 to 64."""
    cap: int = args.max_batch_cap or min(64, max(8, 2 * int(base.get("max_batch_size", 32))))
    return cap


def rows_waiting(outcome: Outcome, rows_per_request: int) -> int | None:
    """The most rows that were ever waiting at once in ``outcome``'s ramp (its most clients x the
    rows of a request), where that is within its max_batch_size: then that cap never
    split a batch, and a larger one serves every load the ramp measured the same way. None where
    the cap may have bound, or nothing was measured (a server that did not start, a candidate
    ``--max-drift`` left out). On the 2-core VM every quiet all-MiniLM-L6-v2 run's ramps stopped
    at 8 clients or fewer (the SLO), so batch 16, 32 and 64 measured batch 8's server again,
    76-187 s of a 600-s budget, and the 2-worker layouts were skipped for lack of it."""
    if not outcome.steps:
        return None
    waiting = max(step.concurrency for step in outcome.steps) * max(1, rows_per_request)
    return waiting if waiting <= outcome.candidate.max_batch_size else None


def stop(outcome: Outcome, before: list[Outcome], larger: list[int], rows_per_request: int) -> str | None:
    """Why the ladder stops after ``outcome`` (its larger sizes, ``larger``, not run), in words for
    the report's decisions; None where it goes on. ``before``: the ladder's outcomes so far."""
    if not larger:
        return None
    sizes = ", ".join(str(s) for s in larger)
    size = outcome.candidate.max_batch_size
    waiting = rows_waiting(outcome, rows_per_request)
    if waiting is not None:
        rows = f"{rows_per_request} row{'s' if rows_per_request > 1 else ''}"
        return (f"max_batch_size {sizes} not run: at max_batch_size {size} at most {waiting} rows were "
                f"ever waiting (its ramp's most clients x {rows} a request), so a larger cap could not "
                "change a batch at any load measured")
    from batchserve_planning.ramp import trend

    measured = [o for o in before if o.best is not None]
    if not measured or outcome.error is not None:
        return None
    top = max(measured, key=lambda o: o.best.rows_per_s if o.best else 0.0)
    assert top.best is not None
    figure = outcome.best
    if figure is not None and trend(figure, top.best) > 0:
        return None
    carried = "nothing within the SLO" if figure is None else f"{figure.rows_per_s:,.0f}/s"
    return (f"max_batch_size {sizes} not run: max_batch_size {size} carried {carried}, no more than "
            f"max_batch_size {top.candidate.max_batch_size}'s {top.best.rows_per_s:,.0f}/s beyond their "
            "measured noise, so the search goes on to the workers, waits and instances")
