"""The final round and the re-run: the figures a recommendation states, measured in turn.

A checked figure (``checked``) pins a server's throughput down to 3% over the seconds it is
measured, but this machine's own speed moves over minutes. On the 2-core VM with nothing else
running, all-MiniLM-L6-v2 (2 workers, batch 8, 8 clients) measured 95-111 inferences/s on four
fresh servers, and 108-139/s a quarter of an hour later on three servers measured in turn, each
tracking the others within 5% in 5 of 6 rounds: the speed changes with the hour, not with the
server. Measured one after the other, the pick's final round (132/s) and its re-run (95/s) were
0.72x apart with both figures known to 3%.

So figures that are compared are measured in turn, as a benchmark compares with its baseline:
the finalists on servers started together, one run each per round, the order reversed every
round so a steady drift falls on each alike (``checked.measure_alternating``); and the re-run, a
fresh start of the pick, in turn with the pick's own final-round server, kept running for it.
The re-run holds when it is within 10% of that server over the same minutes and its p99 within
the SLO. How far the pick's server moved from its final-round figure is the machine's drift,
reported beside it. Where the servers could not run side by side (a GPU model: two copies may
not fit its memory), each is measured alone, one after the other, as before.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchserve_planning.budget import finalists_deadline, rerun_reserve_s
from batchserve_planning.final_loads import final_clients, lower_load

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from batchserve_planning.candidates import Outcome
    from batchserve_planning.ramp import Step
    from batchserve_planning.serverproc import ManagedServer
    from batchserve_planning.sweep import Sweep


def side_by_side(outcomes: list[Outcome]) -> bool:
    """Whether these candidates' servers may run at once: on the CPU only (a GPU's memory may
    hold one copy), and their peak memory together within half of what this machine has free."""
    if any(o.candidate.device != "cpu" for o in outcomes):
        return False
    return sum(o.peak_rss_bytes or 0 for o in outcomes) <= available_bytes() / 2


def available_bytes(meminfo: Path = Path("/proc/meminfo")) -> int:
    """MemAvailable (``/proc/meminfo``); 0 where it cannot be read (then one at a time)."""
    try:
        text = meminfo.read_text(encoding="ascii")
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


class Finals:
    """The final round and the re-run of one sweep; ``close`` stops what the re-run did not."""

    def __init__(self, sweep: Sweep) -> None:
        self.sweep = sweep
        self.kept: dict[int, ManagedServer] = {}
        """The finalists' servers, by ``id`` of their outcome, kept for the re-run."""
        self.over_slo: dict[int, Step] = {}
        """The final round's first figures (by ``id`` of their outcome) that were over the SLO and
        were measured again at a lower load: the report shows both."""

    def final_round(self, ranked: list[Outcome], rerun: bool) -> list[tuple[Outcome, Step]]:
        """``ranked`` measured again in turn (one at a time where they cannot run side by side),
        at their best load, in runs until their means are known; one over the SLO is measured again
        at the next lower load it met the SLO at in its ramp. ``rerun``: the re-run follows; the
        final round leaves it as many rounds as it takes (``budget.rerun_reserve_s``) and keeps the
        servers for it."""
        sweep = self.sweep
        end = sweep.started + sweep.args.budget_s
        if rerun:
            end -= rerun_reserve_s(ranked, sweep.settings, end - time.monotonic())
        groups = [ranked] if side_by_side(ranked) else [[o] for o in ranked]
        if len(groups) > 1 and len(ranked) > 1:
            sweep.notes.append("the finalists were measured one after the other, not in turn: "
                               "two servers of them might not fit this machine's memory at once")
        finals: list[tuple[Outcome, Step]] = []
        for index, group in enumerate(groups):
            now = time.monotonic()
            left = sum(len(g) for g in groups[index:])
            deadline = finalists_deadline(now, end, left, measured=len(group))
            servers = self._start(group, "final")
            keep = rerun and len(groups) == 1
            try:
                finals += self._measure(servers, deadline, back_off=True)
            finally:  # kept ones are stopped by ``close``, also when the measurement was cut short
                for outcome, server in servers:
                    if keep:
                        self.kept[id(outcome)] = server
                    else:
                        server.stop()
        return finals

    def verify(self, pick: Outcome, predicted: Step) -> dict[str, Any]:
        """Start the pick afresh and measure it in turn with its final-round server (alone where
        that was not kept), at the predicted load: measured vs that server over the same minutes,
        each figure known when its runs' spread pooled with the final round's allows
        (``checked.mean_known``)."""
        from batchserve_planning.checked import verdict

        sweep = self.sweep
        reference = self.kept.pop(id(pick), None)
        self.close()
        fresh = self._start([pick], "verification")
        try:
            if not fresh:
                return {"error": "the re-run did not start; see logs/", "holds": False}
            pairs = fresh + ([(pick, reference)] if reference is not None else [])
            steps = self._measure(pairs, sweep.started + sweep.args.budget_s, back_off=False,
                                  clients=predicted.concurrency, prior=[predicted],
                                  labels=[f"re-run of the pick: {pick.candidate.label()}",
                                          "the pick's final-round server, in turn with its re-run"])
        finally:
            for _, server in fresh:
                server.stop()
            if reference is not None:
                reference.stop()
        if not steps:
            return {"error": "the re-run did not complete; see logs/", "holds": False}
        return verdict(predicted, steps[0][1], sweep.settings.slo_ms,
                       reference=steps[1][1] if len(steps) > 1 else None)

    def entries(self, outcomes: list[Outcome], finals: list[tuple[Outcome, Step]]) -> list[dict[str, Any]]:
        """``finals`` as ``results.json`` keeps them: each one's candidate (its index in
        ``outcomes``), its figure, and the figure over the SLO it replaced, if any."""
        return [{"candidate": outcomes.index(o), "step": asdict(step),
                 "over_slo": asdict(self.over_slo[id(o)]) if id(o) in self.over_slo else None}
                for o, step in finals]

    def close(self) -> None:
        for server in self.kept.values():
            server.stop()
        self.kept.clear()

    def _start(self, outcomes: list[Outcome], name: str) -> list[tuple[Outcome, ManagedServer]]:
        from batchserve_planning.load.scrape import ServerError

        sweep = self.sweep
        assert sweep.bars is not None
        started: list[tuple[Outcome, ManagedServer]] = []
        try:
            for outcome in outcomes:
                sweep.count += 1
                try:
                    server = sweep.start_server(outcome.candidate, f"{name}-{sweep.count:02d}")
                    started.append((outcome, server))
                except ServerError as exc:
                    sweep.bars.print(f"{name}: {outcome.candidate.label()} did not start "
                                     f"({str(exc).splitlines()[0]})")
        except BaseException:  # interrupted while starting the next: stop those already started
            for _, server in started:
                server.stop()
            raise
        return started

    def _measure(self, servers: list[tuple[Outcome, ManagedServer]], deadline: float, *, back_off: bool,
                 clients: int | None = None, labels: list[str] | None = None,
                 prior: Sequence[Step] = ()) -> list[tuple[Outcome, Step]]:
        """Checked figures of ``servers`` measured in turn; with ``back_off``, those over the SLO
        again at the next lower load within it in their ramp (in turn with each other). ``prior``:
        earlier figures of the configuration every server here runs (``checked.mean_known``)."""
        from batchserve_planning.checked import measure_alternating
        from batchserve_planning.ramp import measure_step

        sweep = self.sweep
        assert sweep.bars is not None
        names = labels or [f"final round: {o.candidate.label()}" for o, _ in servers]
        requests = [sweep.requests_for(server) for _, server in servers]
        bars = sweep.bars

        def run(i: int, level: int) -> Step:
            bars.update(sweep.overall, status=names[i])
            return measure_step(servers[i][1].url, sweep.target, requests[i], level, sweep.settings, bars,
                                f"{names[i]} @ {level} clients", duration_s=3 * sweep.settings.step_s,
                                min_responses=3 * sweep.settings.min_responses)

        def in_turn(levels: dict[int, int], after: Callable[[list[Step]], float] | None = None,
                    ) -> dict[int, Step]:
            runs = [partial(run, i, level) for i, level in levels.items()]
            figures = measure_alternating(runs, sweep.settings.slo_ms, deadline, prior=prior,
                                          after=after)
            return dict(zip(levels, figures, strict=True))

        def backing_off_s(figures: list[Step]) -> float:  # figures in ``servers``' order
            return back_off_s([(o, f) for (o, _), f in zip(servers, figures, strict=True)])

        done: dict[int, Step] = {}
        try:  # the re-run's two servers are one outcome: both at ``clients``
            done = in_turn({i: clients or final_clients(o) for i, (o, _) in enumerate(servers)},
                           backing_off_s if back_off else None)
            if back_off:  # those over the SLO: again at the next lower load they met it at
                lower = {i: level for i, step in done.items() if not step.within_slo
                         and (level := lower_load(servers[i][0], step.concurrency)) is not None}
                for i, level in lower.items():
                    self._backing_off(servers[i][0], done[i], level)
                done.update(in_turn(lower))
        except (OSError, RuntimeError) as exc:
            sweep.bars.print(f"{names[0]}: {type(exc).__name__}: {exc}")
        for _ in servers:
            sweep.bars.update(sweep.overall, advance=1)
        return [(servers[i][0], done[i]) for i in sorted(done)]

    def _backing_off(self, outcome: Outcome, first: Step, level: int) -> None:
        """Keep ``first`` (over the SLO) and say that ``outcome`` is measured again at ``level``."""
        from batchserve_planning.formats import rate_text
        from batchserve_planning.load.results import format_ms

        self.over_slo[id(outcome)] = first
        self.sweep.notes.append(
            f"final round: {outcome.candidate.label()} was over the SLO at {first.concurrency} clients "
            f"({rate_text(first.rows_per_s)} inferences/s, p99 {format_ms(first.p99_ms)}, its windows' "
            f"highest {format_ms(first.p99_ms if first.p99_high is None else first.p99_high)}, over "
            f"{first.runs} run{'s' if first.runs != 1 else ''}, {first.seconds:.0f} s), so it was measured "
            f"again at {level} clients, the most below that its ramp met the SLO at")


def back_off_s(figures: list[tuple[Outcome, Step]]) -> float:
    """The least that measuring again at a lower load costs (``Finals._measure``'s back-off): the
    least rounds (``checked``) of one run each of the figures over the SLO that have a lower load,
    each run as long as theirs took. The final round stops that much before its deadline, so
    that the back-off's least rounds do not run past it: on the 2-core VM a resnet50 run whose
    final round ran to its deadline and then backed one finalist off ended 39 s past its 900."""
    from batchserve_planning.checked import least_runs

    over = [step for outcome, step in figures
            if not step.within_slo and lower_load(outcome, step.concurrency) is not None]
    return least_runs(over) * sum(step.seconds / step.runs for step in over)
