"""``recommend``'s final choice (``batchserve_planning/choices.py::choose``): the final round's
best within the SLO, else the sweep's, never a configuration that missed the SLO."""

from __future__ import annotations

from dataclasses import replace

from batchserve_planning.candidates import Candidate, Outcome
from batchserve_planning.choices import choose
from batchserve_planning.ramp import Step


def step(rows_per_s: float, *, within_slo: bool = True, p99_ms: float = 50.0, clients: int = 8) -> Step:
    return Step(concurrency=clients, rps=rows_per_s, rows_per_s=rows_per_s, p50_ms=p99_ms / 2, p99_ms=p99_ms,
                max_ms=p99_ms * 2, error_rate=0.0, mean_batch_size=4.0, within_slo=within_slo)


def outcome(batch: int, *steps: Step, peak_rss_bytes: int | None = None) -> Outcome:
    return Outcome(Candidate(max_batch_size=batch, max_wait_ms=1.0, instances=1), list(steps),
                   peak_rss_bytes=peak_rss_bytes)


def test_the_final_rounds_best_within_the_slo_is_the_pick() -> None:
    fast, slow = outcome(32, step(900)), outcome(8, step(800))
    over_slo = step(1500, within_slo=False, p99_ms=400)  # the most rows/s, but p99 over the SLO
    within = step(700)
    pick, predicted = choose([fast, slow], [(fast, over_slo), (slow, within)])
    assert (pick, predicted) == (slow, within)  # its final step predicts it, not its sweep's best


def test_of_two_finals_within_the_slo_the_faster_one() -> None:
    a, b = outcome(8, step(800)), outcome(16, step(850))
    finals = [(a, step(820)), (b, step(790))]
    assert choose([a, b], finals) == (a, finals[0][1])


def test_without_a_final_within_the_slo_the_sweeps_best_within_it() -> None:
    missed = outcome(64, step(2000, within_slo=False, p99_ms=900))  # never within: no best
    good = outcome(16, step(300, clients=2), step(1000, clients=4),
                   step(1200, within_slo=False, p99_ms=300, clients=8))
    other = outcome(8, step(600))
    finals = [(good, step(1300, within_slo=False, p99_ms=250, clients=8))]
    pick, predicted = choose([missed, good, other], finals)
    assert pick is good and predicted == step(1000, clients=4)  # its best within the SLO, not its 1200


def test_a_sweep_figure_the_final_round_measured_over_the_slo_is_not_the_pick() -> None:
    """all-MiniLM-L6-v2 beside a CPU hog (2026-12-07): batch 1 met the SLO at 1 client in one
    sweep step (p99 194 ms against 200) and missed it in the final round at the same 1 client
    (213 ms), with no lower load to back off to. Its sweep figure is what the final round refuted:
    neither it nor the figure at any load at or above the one refuted is the pick."""
    edge = outcome(1, step(18.3, p99_ms=194, clients=1), step(17.2, within_slo=False, p99_ms=283, clients=2))
    never = outcome(32, step(17.7, within_slo=False, p99_ms=209, clients=1))
    notes: list[str] = []
    refuted = step(16.2, within_slo=False, p99_ms=213, clients=1)
    assert choose([never, edge], [(edge, refuted)], notes) == (None, None)
    (note,) = notes
    assert "batch 1, wait 1 ms, 1 worker x 1 inst" in note and "over the SLO in the final round" in note
    # Below the load the final round refuted, its sweep figure still stands.
    lower = outcome(1, step(9.0, clients=1), step(18.3, p99_ms=194, clients=2))
    refuted_at_2 = step(16.2, within_slo=False, p99_ms=213, clients=2)
    assert choose([lower], [(lower, refuted_at_2)]) == (lower, step(9.0, clients=1))
    # A candidate the final round did not measure keeps its sweep figure.
    third = outcome(4, step(12.0, clients=1))
    assert choose([edge, third], [(edge, refuted)]) == (third, step(12.0, clients=1))


MIB = 2**20


def noisy(rows_per_s: float, spread: float) -> Step:
    """A step whose windows ranged ``spread`` either side of it."""
    return replace(step(rows_per_s), rows_low=rows_per_s * (1 - spread), rows_high=rows_per_s * (1 + spread))


def test_within_the_noise_of_the_best_the_simplest_and_the_report_says_so() -> None:
    top = outcome(32, noisy(1000, 0.05), peak_rss_bytes=900 * MIB)
    close = outcome(16, noisy(920, 0.04), peak_rss_bytes=500 * MIB)  # 8% fewer, within 5% + 4% of noise
    far = outcome(8, noisy(800, 0.04), peak_rss_bytes=100 * MIB)  # 20% fewer: beyond it
    notes: list[str] = []
    assert choose([top, close, far], [], notes) == (close, noisy(920, 0.04))
    (note,) = notes
    assert "batch 16, wait 1 ms, 1 worker x 1 inst" in note and "equivalent" in note
    assert "less memory (500 MiB against 900 MiB)" in note
    # A few MiB apart is the same memory: then the smaller batch.
    notes.clear()
    same = outcome(64, noisy(1010, 0.05), peak_rss_bytes=900 * MIB + 3 * MIB)
    assert choose([top, same], [], notes)[0] is top
    assert "a smaller batch (32 against 64)" in notes[0]
    # Narrow spreads: the same 8% is a difference, and the fastest is the pick, with no note.
    notes.clear()
    sharp = outcome(32, noisy(1000, 0.01), peak_rss_bytes=900)
    assert choose([sharp, outcome(16, noisy(920, 0.01), peak_rss_bytes=500)], [], notes)[0] is sharp
    assert notes == []


def test_fewer_workers_come_before_less_memory() -> None:
    one = Outcome(Candidate(64, 0.0, 1, workers=1), [noisy(1000, 0.05)], peak_rss_bytes=400)
    two = Outcome(Candidate(64, 0.0, 1, workers=2), [noisy(1050, 0.05)], peak_rss_bytes=300)
    notes: list[str] = []
    assert choose([one, two], [], notes)[0] is one
    assert "fewer workers (1 against 2)" in notes[0]


def test_nothing_within_the_slo_is_no_pick() -> None:
    missed = outcome(8, step(500, within_slo=False, p99_ms=900))
    assert choose([missed, outcome(16)], [(missed, step(600, within_slo=False))]) == (None, None)
    assert choose([], []) == (None, None)


def test_the_final_round_measures_the_sweeps_pick_and_the_fastest_other() -> None:
    """The sweep's pick is the simplest within the noise of the fastest, so it is a finalist even
    where another candidate measured a few percent more."""
    import argparse
    import time

    from batchserve_planning.sweep import Sweep

    one = Outcome(Candidate(4, 0.0, 1, workers=1), [noisy(7200, 0.2)], peak_rss_bytes=200)
    two = Outcome(Candidate(4, 0.0, 1, workers=2), [noisy(8000, 0.15)], peak_rss_bytes=400)
    other = Outcome(Candidate(8, 0.0, 1, workers=1), [noisy(7300, 0.1)], peak_rss_bytes=210)
    sweep = Sweep.__new__(Sweep)
    sweep.args, sweep.started = argparse.Namespace(budget_s=1e9), time.monotonic()
    sweep.notes, sweep.rerun = [], True
    measured: list[Outcome] = []

    class Finals:  # what ``finals`` measures, in turn: here only which, in what order
        def final_round(self, ranked: list[Outcome], rerun: bool) -> list[tuple[Outcome, Step]]:
            measured.extend(ranked)
            return [(o, o.steps[0]) for o in ranked]

    sweep.finals = Finals()  # type: ignore[assignment]
    sweep.final_round([one, two, other])
    assert measured == [one, two]  # the pick (fewer workers, within the noise), then the fastest


def test_a_final_round_that_overturns_the_search_says_so() -> None:
    """The search kept the simpler of two equivalent candidates; the final round measured the other
    beyond the noise of it: that one is picked, and the notes say the final round overturned the
    search (else the report would show the search's "is kept" next to a different pick)."""
    from batchserve_planning.sweep import _best

    small = outcome(2, noisy(11.7, 0.05), peak_rss_bytes=1028 * MIB)
    large = outcome(4, noisy(12.0, 0.02), peak_rss_bytes=1175 * MIB)
    notes: list[str] = []
    assert _best([small, large], notes) is small
    (searched,) = notes
    assert "batch 2, wait 1 ms, 1 worker x 1 inst is kept for the rest of the search" in searched
    assert "is picked" not in searched
    finals = [(small, noisy(10.0, 0.01)), (large, noisy(12.0, 0.01))]  # the search's pick first
    assert choose([small, large], finals, notes) == (large, finals[1][1])
    overturned = notes[1]
    assert overturned.startswith("the final round overturned the search: batch 4, wait 1 ms")
    assert "against batch 2, wait 1 ms, 1 worker x 1 inst (10/s" in overturned
    # Where the final round agrees with the search, no such note.
    notes.clear()
    assert choose([small, large], [(small, noisy(12.0, 0.01)), (large, noisy(11.0, 0.01))], notes)[0] is small
    assert notes == []


def test_no_pick_after_the_final_round_says_what_it_measured() -> None:
    from dataclasses import asdict

    from batchserve_planning.report import no_pick_section

    edge = outcome(1, step(18.3, p99_ms=194, clients=1))
    refuted = step(16.2, within_slo=False, p99_ms=213, clients=1)
    notes: list[str] = []
    assert choose([edge], [(edge, refuted)], notes) == (None, None)
    results = {"slo_p99_ms": 200, "decisions": notes,
               "candidates": [{"label": edge.candidate.label(), "best": asdict(edge.steps[0])}],
               "final_round": [{"candidate": 0, "step": asdict(refuted), "over_slo": None}]}
    text = "\n".join(no_pick_section(results))
    assert "the final round measured its finalists over it" in text and notes[0] in text
    assert "| #1 batch 1, wait 1 ms, 1 worker x 1 inst | 1 | 18.3 | 16.2" in text
    assert "213 ms (over the SLO)" in text
    # Nothing within the SLO in the sweep: no final round, and the report says so.
    assert "even at one client" in "\n".join(no_pick_section({**results, "final_round": []}))


def test_a_profile_without_a_pick_says_whether_its_final_round_refuted_the_sweep() -> None:
    from batchserve_planning.fleet import _too_slow

    edge = outcome(1, step(18.3, p99_ms=194, clients=1))
    refuted = step(16.2, within_slo=False, p99_ms=213, clients=1)
    why = _too_slow([edge], [(edge, refuted)], 200)
    assert why.startswith("met the SLO in its sweep, but not when measured again in the final round")
    assert "at 1 clients, p99 213.0 ms against 200 ms" in why
    slow = outcome(1, step(5.0, within_slo=False, p99_ms=900, clients=1))
    assert _too_slow([slow], [], 200).startswith("too slow for the SLO at any batch size: its lowest p99 "
                                                 "was 900")


def test_a_candidate_that_never_met_the_slo_shows_the_lowest_p99_it_measured() -> None:
    """all-MiniLM-L6-v2 beside a CPU hog (2026-12-07): no pick, and its candidates' row read only
    "p99 over the SLO even at 1 client": how far over, the user had to find in another table."""
    from dataclasses import asdict

    from batchserve_planning.report import _candidates_table

    steps = [step(16.2, within_slo=False, p99_ms=215.0, clients=1),
             step(14.9, within_slo=False, p99_ms=242.0, clients=1)]
    row = {"label": "batch 32", "best": None, "error": None, "peak_rss_bytes": None, "seconds": 63.0,
           "steps": [asdict(s) for s in steps]}
    (line,) = [line for line in _candidates_table([row], None) if line.startswith("| 1 |")]
    assert "p99 over the SLO even at 1 client (lowest 215 ms, at 1)" in line
