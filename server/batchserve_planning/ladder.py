"""The ladder of batch sizes a ``recommend`` search measures (``Sweep.search``): max_batch_size
1, 2, 4, ... up to a cap (``batch_cap``), with the workers that won at the configured size
(``start_size``), the first wait and instance count. It starts at the configured size and goes
up, then down (``around``); where the configured size carried nothing within the SLO, it climbs
from batch 1 (``climb``). Climbing from batch 1 first spent a quiet diabetes search's 300 s on
batch 1-8 at 2 workers on the 2-core VM, none of which carried as much as the configured 64.

Up, it stops early, with the reason in the report's decisions (``stop``), where a larger cap
could not help:

- *exactly*, where the last ramp never had more rows waiting than its cap (``rows_waiting``): a
  larger cap would split no batch at any load measured, so it would measure the same server;
- *by measurement*, where the last two sizes carried no more than the last that grew beyond
  their measured noise, each figure's windows in agreement (the ramp's rule for a plateau,
  ``ramp.FLAT_STEPS``), or the last carried nothing within the SLO: the surface has flattened,
  and the budget goes to the waits and instances instead. On the 2-core VM diabetes's
  batch 16, 32 and 64 measured within each other's noise run after run (21,300-25,200/s). One
  flat size is not enough: batch 2 measured within batch 1's noise (its windows spread
  8,000-11,200/s) where batch 8 carried twice as much.

Down (``descend``), it goes on while a smaller cap carries as much within the noise (the search
picks the smallest of those), and skips the sizes its ramps never filled, for the same reason.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from batchserve_planning.candidates import Outcome

Run = Callable[[int], list[Outcome]]
"""Measure the ladder's candidate at this max_batch_size: its outcome, or none where the budget
left it out (the search lists it as skipped)."""

FLAT_SIZES = 2
"""Sizes in a row without growth beyond the noise that end the ladder (``ramp.FLAT_STEPS``'s rule)."""


def batch_sizes(cap: int) -> list[int]:
    sizes = [1]
    while sizes[-1] * 2 <= cap:
        sizes.append(sizes[-1] * 2)
    return sizes


def batch_cap(args: argparse.Namespace, base: dict[str, Any]) -> int:
    """The largest max_batch_size a sweep tries: ``--max-batch-cap``, else 2x the configured one, 8 to 64."""
    cap: int = args.max_batch_cap or min(64, max(8, 2 * configured_size(base)))
    return cap


def configured_size(base: dict[str, Any]) -> int:
    """The model's own max_batch_size (32 where its table leaves it out)."""
    return int(base.get("max_batch_size", 32))


def start_size(sizes: list[int], base: dict[str, Any]) -> int:
    """Where a search with more than one worker count measures the workers, before the ladder
    (``Sweep.search``): the configured max_batch_size, or the largest of ``sizes`` below it."""
    configured = configured_size(base)
    return max([s for s in sizes if s <= configured], default=sizes[0])


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


def stop(ladder: list[Outcome], larger: list[int], rows_per_request: int) -> str | None:
    """Why the ladder stops after its last outcome (``ladder``: its outcomes so far, in order; its
    larger sizes, ``larger``, not run), in words for the report's decisions; None where it goes on."""
    if not ladder or not larger:
        return None
    outcome, sizes = ladder[-1], _listed(larger)
    size = outcome.candidate.max_batch_size
    waiting = rows_waiting(outcome, rows_per_request)
    if waiting is not None:
        rows = f"{rows_per_request} row{'s' if rows_per_request > 1 else ''}"
        return (f"max_batch_size {sizes} not run: at max_batch_size {size} at most {waiting} rows were "
                f"ever waiting (its ramp's most clients x {rows} a request), so a larger cap could not "
                "change a batch at any load measured")
    if outcome.error is None and outcome.steps and outcome.best is None and len(ladder) > 1:
        return (f"max_batch_size {sizes} not run: max_batch_size {size} carried nothing within the SLO, "
                "so a larger cap would not either")
    flat, base = flat_sizes(ladder)
    if len(flat) < FLAT_SIZES or base is None or base.best is None:
        return None
    named = " and ".join(str(o.candidate.max_batch_size) for o in flat)
    return (f"max_batch_size {sizes} not run: max_batch_size {named} carried no more than max_batch_size "
            f"{base.candidate.max_batch_size}'s {base.best.rows_per_s:,.0f}/s beyond their measured noise "
            f"({FLAT_SIZES} in a row, each figure's windows in agreement: the ramp's rule for a plateau), "
            "so the search goes on without them")


def flat_sizes(ladder: list[Outcome]) -> tuple[list[Outcome], Outcome | None]:
    """The ladder's last sizes in a row that carried no more than ``base`` beyond their noise, where
    both figures are known (their windows agreed: within the noise says nothing of a figure whose
    windows did not), and ``base``: the last size that carried more than the one before it beyond
    the noise (or the first measured). A size that did not start changes neither."""
    from batchserve_planning.ramp import trend

    flat: list[Outcome] = []
    base: Outcome | None = None
    for outcome in ladder:
        figure = outcome.best
        if figure is None:
            continue
        if base is None or base.best is None or trend(figure, base.best) > 0:
            base, flat = outcome, []
        elif figure.settled and base.best.settled:
            flat.append(outcome)
    return flat, base


def around(first: Outcome, sizes: list[int], run: Run, rows_per_request: int,
           notes: list[str]) -> list[Outcome]:
    """The ladder from ``first``, the configured size measured with the workers that won: up to
    the cap while ``stop`` lets it go on, then down (``descend``). Its outcomes, ``first``'s
    included; why it stopped each way goes into ``notes``."""
    size = first.candidate.max_batch_size
    ladder = climb([first], [s for s in sizes if s > size], run, rows_per_request, notes)
    return ladder + descend(ladder, [s for s in sizes if s < size], run, rows_per_request, notes)


def climb(ladder: list[Outcome], sizes: list[int], run: Run, rows_per_request: int,
          notes: list[str]) -> list[Outcome]:
    """``ladder`` (its outcomes so far) climbed through ``sizes`` while ``stop`` lets it go on."""
    ladder = list(ladder)
    why = stop(ladder, sizes, rows_per_request)
    for index, size in enumerate(sizes):
        if why is not None:
            break
        done = run(size)
        ladder += done
        why = stop(ladder, sizes[index + 1:], rows_per_request) if done else None
    if why is not None:
        notes.append(why)
    return ladder


def descend(ladder: list[Outcome], smaller: list[int], run: Run, rows_per_request: int,
            notes: list[str]) -> list[Outcome]:
    """Below the ladder's sizes: each smaller max_batch_size in turn, while it carries as much as
    the fastest of the ladder within the noise (the search then picks the smallest of those,
    ``choices.simplest``: the lower latency and memory). It stops at the first that carries less
    beyond the noise, or nothing within the SLO: a smaller cap would not carry more. Sizes that
    would serve every load measured the same way (``rows_waiting``) are not run. Its outcomes."""
    from batchserve_planning.ramp import trend

    done: list[Outcome] = []
    fastest = max((o for o in ladder if o.best is not None),
                  key=lambda o: o.best.rows_per_s if o.best else 0.0)
    current = ladder[0]  # the smallest measured so far: ``first``, where the ladder started
    queue = sorted(smaller, reverse=True)
    while queue:
        waiting = rows_waiting(current, rows_per_request)
        same = [s for s in queue if waiting is not None and s >= waiting]
        if same:
            notes.append(f"max_batch_size {_listed(same)} not run: at max_batch_size "
                         f"{current.candidate.max_batch_size} at most {waiting} rows were ever waiting, so a "
                         f"cap down to {min(same)} would change no batch at any load measured either")
            queue = queue[len(same):]
            continue
        size = queue.pop(0)
        measured = run(size)
        if not measured:
            continue  # left out for the budget (listed as skipped), as are those after it
        outcome = measured[-1]
        done.append(outcome)
        if not outcome.steps:
            continue  # it did not start, or ``--max-drift`` left it out: that says nothing of the next
        current = outcome
        figure, against = outcome.best, fastest.best
        assert against is not None
        if figure is None or trend(figure, against) < 0:
            if queue:
                carried = ("nothing within the SLO" if figure is None else
                           f"less than max_batch_size {fastest.candidate.max_batch_size}'s "
                           f"{against.rows_per_s:,.0f}/s beyond their measured noise")
                notes.append(f"max_batch_size {_listed(queue)} not run: max_batch_size {size} carried "
                             f"{carried}, so a smaller cap would not carry more")
            break
        if figure.rows_per_s > against.rows_per_s:
            fastest = outcome
    return done


def _listed(sizes: list[int]) -> str:
    return ", ".join(str(s) for s in sorted(sizes))
