"""The ramp's stopping rule (``ramp.climb``) on synthetic throughput curves: noise does not stop
it early; a curve that truly levels off stops it."""

from __future__ import annotations

import random
from dataclasses import replace

from batchserve_planning.ramp import RampSettings, Step, climb

SETTINGS = RampSettings(slo_ms=100.0, max_concurrency=512)


def step(clients: int, rows_per_s: float, spread: float = 0.02, p99_ms: float = 10.0) -> Step:
    return Step(concurrency=clients, rps=rows_per_s, rows_per_s=rows_per_s, p50_ms=p99_ms / 2, p99_ms=p99_ms,
                max_ms=p99_ms * 2, error_rate=0.0, mean_batch_size=None, within_slo=p99_ms <= 100.0,
                rows_low=rows_per_s * (1 - spread), rows_high=rows_per_s * (1 + spread), p99_high=p99_ms)


def capacity(clients: int) -> float:
    """Grows to 8,000/s at 64 clients, flat after."""
    return min(8000.0, 125.0 * clients)


def test_a_noisy_growing_curve_is_followed_to_its_plateau() -> None:
    """Every step drawn with up to 6% noise and a spread saying so, and a contended dip (0.4x, as
    when another job takes the CPUs) the first time 4 and 8 clients are measured."""
    rng = random.Random(7)
    seen: dict[int, int] = {}

    def measure(clients: int) -> Step:
        seen[clients] = seen.get(clients, 0) + 1
        dip = 0.4 if clients in (4, 8) and seen[clients] == 1 else 1.0
        return step(clients, capacity(clients) * dip * rng.uniform(0.94, 1.06), spread=0.06)

    steps = climb(measure, SETTINGS)
    levels = [s.concurrency for s in steps]
    assert max(levels) >= 64  # it reached the plateau...
    assert max(levels) <= 256  # ...and stopped on it, well before the most clients allowed
    assert seen[4] == 2 and seen[8] == 2  # each dip below the best so far was measured again


def test_a_curve_that_levels_off_stops_two_steps_into_the_plateau() -> None:
    steps = climb(lambda clients: step(clients, capacity(clients)), SETTINGS)
    assert [s.concurrency for s in steps] == [1, 2, 4, 8, 16, 32, 64, 128, 256]


def test_growth_within_the_noise_is_no_growth() -> None:
    """+5% a doubling, each step +-10% noisy by its windows: not growth beyond the noise."""
    steps = climb(lambda clients: step(clients, 1000 * 1.05 ** clients.bit_length(), spread=0.10), SETTINGS)
    assert [s.concurrency for s in steps] == [1, 2, 4]


def test_steps_whose_windows_did_not_agree_do_not_end_a_ramp_as_flat() -> None:
    """A batch-4 echo backend at 2 and 4 clients: batches of 1 or 2 by timing, its windows not in
    agreement (ranges of +-40% and +-12%). Growth within such noise is not "no growth": the ramp goes
    on to where it shows, and stops two settled steps into the plateau."""
    curve = {1: (48.0, 0.05, True), 2: (65.0, 0.40, False), 4: (99.0, 0.12, False)}

    def measure(clients: int) -> Step:
        rows, spread, settled = curve.get(clients, (min(200.0, 24.0 * clients), 0.03, True))
        return replace(step(clients, rows, spread=spread), settled=settled)

    assert [s.concurrency for s in climb(measure, SETTINGS)] == [1, 2, 4, 8, 16, 32]


def test_the_slo_ends_the_ramp_and_the_level_between_is_tried() -> None:
    def measure(clients: int) -> Step:
        return step(clients, capacity(clients), p99_ms=clients * 2.0)  # 100 ms at 50 clients

    levels = [s.concurrency for s in climb(measure, SETTINGS)]
    assert levels == [1, 2, 4, 8, 16, 32, 64, 48]


def test_no_plateau_before_the_batches_can_fill() -> None:
    """Batches of 32 in 2 workers: a flat start (as when the machine is busy) does not end the
    ramp before 64 clients, where the batches can fill."""
    steps = climb(lambda clients: step(clients, 1000.0), SETTINGS, fill_clients=64)
    assert [s.concurrency for s in steps] == [1, 2, 4, 8, 16, 32, 64]


def test_a_flat_step_on_a_busier_machine_is_measured_again() -> None:
    seen: dict[int, int] = {}

    def measure(clients: int) -> Step:
        seen[clients] = seen.get(clients, 0) + 1
        busy = clients == 4 and seen[clients] == 1  # another job took the CPUs this once
        rate = capacity(2) if busy else capacity(clients)  # flat against 2 clients
        return replace(step(clients, rate), others_cpu=0.6 if busy else 0.05)

    steps = climb(measure, RampSettings(slo_ms=100.0, max_concurrency=16))
    assert seen[4] == 2
    assert [s.concurrency for s in steps] == [1, 2, 4, 4, 8, 16]


def test_a_step_over_the_slo_on_a_contended_machine_is_measured_again() -> None:
    """One client over the SLO while other work took 60% of the CPUs (a stall, not the model):
    measured again before the candidate is ruled out."""
    seen: dict[int, int] = {}

    def measure(clients: int) -> Step:
        seen[clients] = seen.get(clients, 0) + 1
        stalled = clients == 1 and seen[clients] == 1
        return replace(step(clients, capacity(clients), p99_ms=150.0 if stalled else 10.0),
                       others_cpu=0.6 if stalled else 0.05)

    steps = climb(measure, RampSettings(slo_ms=100.0, max_concurrency=4))
    assert [s.concurrency for s in steps] == [1, 1, 2, 4]
    assert steps[1].within_slo
