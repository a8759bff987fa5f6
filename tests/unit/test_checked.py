"""Checked figures (``batchserve_planning/checked.py``): the final round's and the re-run's steps,
measured in runs until their mean is known, combined, and the re-run's verdict."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from batchserve_planning.checked import (
    MAX_RUNS,
    MIN_RUNS,
    MIN_RUNS_CONTENDED,
    combine,
    mean_known,
    measure_alternating,
    measure_checked,
    pooled_cv,
    verdict,
)
from batchserve_planning.ramp import Step


def run(rows_per_s: float, *, p99_high: float = 10.0, others: float | None = None) -> Step:
    return Step(concurrency=64, rps=rows_per_s, rows_per_s=rows_per_s, p50_ms=2.0, p99_ms=p99_high - 1,
                max_ms=30.0, error_rate=0.0, mean_batch_size=8.0, within_slo=p99_high <= 20,
                stages_ms={"queue": 1.0, "compute": 2.0}, rows_low=rows_per_s * 0.98,
                rows_high=rows_per_s * 1.02, p99_high=p99_high, windows=3, others_cpu=others)


def series(*values: float) -> Iterator[Step]:
    return iter([run(v) for v in values])


def test_a_mean_is_known_when_its_standard_error_is_within_3_percent() -> None:
    assert mean_known([20000, 20400])  # se 200 = 1% of 20,200
    assert not mean_known([17000, 21000])  # se 2,000 = 10.5%
    assert mean_known([17000, 21000, 19000, 18000, 20000, 19500, 18500, 19000])  # se 440 = 2.3%
    assert not mean_known([20000])  # one run says nothing of its noise


def test_two_runs_that_agree_are_not_enough_where_the_configuration_strayed_more_before() -> None:
    wide = combine([run(v) for v in (18000, 23900, 19500, 22800, 20100, 23000, 18600, 21300)], 20.0)
    assert wide.rows_cv is not None and 0.09 < wide.rows_cv < 0.11 and wide.runs == 8
    assert mean_known([21000, 21010]) and not mean_known([21000, 21010], prior=[wide])
    tight = combine([run(v) for v in (21000, 21200, 20900, 21100)], 20.0)
    assert mean_known([21000, 21010], prior=[tight])  # a quiet final round: two runs still do
    assert not combine([run(21000), run(21010)], 20.0, [wide]).settled
    # pooled: each group's squared deviations from its own mean over all degrees of freedom
    assert pooled_cv([(0.1, 8), (0.0, 2)]) == pytest.approx((0.01 * 7 / 8) ** 0.5)
    assert pooled_cv([(0.1, 1)]) is None and pooled_cv([]) is None


def test_a_quiet_figure_takes_two_runs_and_a_noisy_one_runs_until_its_mean_is_known() -> None:
    calls: list[int] = []

    def measure(values: Iterator[Step]) -> Step:
        calls.append(1)
        return next(values)

    quiet = series(20000, 20300, 99999)
    assert measure_checked(lambda: measure(quiet), 20.0).runs == MIN_RUNS == 2
    calls.clear()
    noisy = series(16000, 20000, 17500, 19000, 18000, 18500, 18200, 18300)
    step = measure_checked(lambda: measure(noisy), 20.0)
    assert 2 < step.runs == len(calls) < MAX_RUNS  # se within 3% after some runs, before the cap
    assert (step.rows_low, step.rows_high) == (16000, 20000)
    calls.clear()
    wild = series(*[10000, 30000] * 10)
    step = measure_checked(lambda: measure(wild), 20.0)
    assert step.runs == MAX_RUNS and not step.settled  # the cap, and it says the mean is not known


def test_on_a_contended_machine_two_runs_that_agree_are_not_enough() -> None:
    busy = iter([run(20000, others=0.5), run(20100, others=0.5), run(17000, others=0.5),
                 run(19000), run(19500), run(18500), run(19200), run(19100), run(19000)])
    step = measure_checked(lambda: next(busy), 20.0)
    assert step.runs > MIN_RUNS_CONTENDED == 3  # the third run showed the noise the first two hid
    quiet = iter([run(20000), run(20100), run(17000)])
    assert measure_checked(lambda: next(quiet), 20.0).runs == 2


def test_no_run_more_once_the_next_would_pass_the_deadline_but_never_fewer_than_two() -> None:
    clock = [0.0]

    def measure(values: Iterator[Step]) -> Step:
        clock[0] += 10.0  # each run takes 10 s
        return next(values)

    noisy = series(*[10000, 30000] * 10)
    step = measure_checked(lambda: measure(noisy), 20.0, deadline=35.0, clock=lambda: clock[0])
    assert step.runs == 3  # at 30 s the next would end at 40 > 35
    clock[0] = 0.0
    noisy = series(*[10000, 30000] * 10)
    step = measure_checked(lambda: measure(noisy), 20.0, deadline=5.0, clock=lambda: clock[0])
    assert step.runs == MIN_RUNS  # past the deadline from the start, still two runs


def test_the_next_round_is_taken_to_last_as_long_as_the_longest_so_far() -> None:
    clock = iter([0.0, 10.0, 30.0, 40.0, 50.0])  # rounds of 10 s and 20 s: their mean 15, the longest 20
    wild = series(*[10000, 30000] * 10)
    step = measure_checked(lambda: next(wild), 20.0, deadline=47.0, clock=lambda: next(clock))
    assert step.runs == MIN_RUNS  # at 30 s a round like the second would end at 50, past 47


def test_combined_runs_are_their_mean_with_their_range_and_the_median_p99() -> None:
    runs = [run(18000, p99_high=12.0, others=0.1), run(20000, p99_high=25.0, others=0.6),
            run(22000, p99_high=14.0)]
    step = combine(runs, 20.0)
    assert step.rows_per_s == pytest.approx(20000) and step.rps == pytest.approx(20000)
    assert (step.rows_low, step.rows_high) == (18000, 22000)
    assert step.p99_ms == 13.0 and step.p99_high == 25.0  # the median of the runs' p99s, the worst
    assert step.within_slo  # one run of three over the SLO does not undo the other two
    assert not combine([run(18000, p99_high=25.0), run(20000, p99_high=26.0), run(22000)], 20.0).within_slo
    assert step.runs == 3 and step.windows == 9 and step.others_cpu == 0.6
    assert step.stages_ms == {"queue": 1.0, "compute": 2.0}
    assert combine([runs[0]], 20.0) is runs[0]


def test_a_rerun_that_misses_says_whether_it_is_within_the_figures_noise() -> None:
    predicted = combine([run(17000), run(21000)], 20.0)  # 19,000, range 17,000-21,000
    near = verdict(predicted, combine([run(15500), run(17500)], 20.0), 20.0)  # 16,500: 0.87x
    assert not near["holds"] and not near["throughput_within_10pct"] and near["within_noise"]
    assert near["step"]["runs"] == 2
    tight = combine([run(19000), run(19100)], 20.0)
    far = verdict(tight, combine([run(15000), run(15100)], 20.0), 20.0)  # 0.79x, both ranges narrow
    assert not far["holds"] and not far["within_noise"]
    held = verdict(tight, combine([run(18800), run(19000)], 20.0), 20.0)
    assert held["holds"] and held["within_noise"]


def test_figures_compared_are_measured_in_turn_the_order_reversed_every_round() -> None:
    order: list[str] = []
    # the machine slows by 1,000 rows/s a run: two servers of the same capacity measured in turn
    # come out equal (A B B A: each is measured as early as the other on average)
    speed = iter(range(40000, 0, -1000))

    def server(name: str) -> Step:
        order.append(name)
        return run(float(next(speed)))

    a, b = measure_alternating([lambda: server("A"), lambda: server("B")], 20.0)
    assert order[:4] == ["A", "B", "B", "A"]
    assert a.runs == b.runs == len(order) // 2 and a.rows_per_s == b.rows_per_s


def test_measured_in_turn_until_every_figure_is_known() -> None:
    quiet, noisy = series(20000, 20100, 20050, 20020), series(17000, 19000, 18000, 18200)
    a, b = measure_alternating([lambda: next(quiet), lambda: next(noisy)], 20.0)
    assert a.runs == b.runs == 4  # the quiet one runs on in turn until the noisy one is known
    clock = iter([0.0, 10.0, 20.0, 30.0])  # a round of 10 s; the deadline at 25 s
    wild = series(*[10000, 30000] * 10)
    a, b = measure_alternating([lambda: next(wild), lambda: run(20000)], 20.0, deadline=25.0,
                               clock=lambda: next(clock))
    assert a.runs == b.runs == MIN_RUNS  # no third round would end by 25 s


def test_a_rerun_measured_in_turn_is_judged_against_its_final_round_server() -> None:
    predicted = combine([run(24000), run(24200)], 20.0)  # the final round, in a fast minute
    reference = combine([run(18000), run(18100)], 20.0)  # the same server, in turn with the re-run
    check = verdict(predicted, combine([run(17500), run(17700)], 20.0), 20.0, reference=reference)
    assert check["holds"] and abs(check["ratio"] - 17600 / 18050) < 1e-9
    assert abs(check["drift"] - 18050 / 24100) < 1e-9 and check["ratio_to_prediction"] < 0.9
    assert check["reference"]["rows_per_s"] == 18050
    slower = verdict(predicted, combine([run(15000), run(15100)], 20.0), 20.0, reference=reference)
    assert not slower["holds"]  # 0.83x the server measured beside it: the start, not the machine


def test_the_deadline_leaves_room_for_what_is_measured_after_the_figures() -> None:
    def rounds(after: object) -> int:
        clock = iter([0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0])  # a round of 10 s; the deadline at 45 s
        wild = series(*[10000, 30000] * 10)
        (step,) = measure_alternating([lambda: next(wild)], 20.0, deadline=45.0, clock=lambda: next(clock),
                                      after=after)  # type: ignore[arg-type]
        return step.runs

    assert rounds(None) == 4  # at 40 s the next round would end at 50
    assert rounds(lambda figures: 10.0) == 3  # and 10 s after it: at 30 s the next would end past 45
    assert rounds(lambda figures: 0.0 if figures[0].within_slo else 10.0) == 4  # what it needs now
