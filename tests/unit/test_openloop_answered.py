"""An open-loop step's answered share (``openloop.answered_enough``): answers are held against the
arrivals due in the window at the median latency, and a shortfall within the count's own noise is
not a server falling behind. The cases are first windows measured on the echo backend (4 rows per
20 ms, capacity 200/s) with 0.3 s steps, as the ``recommend --hardware`` test runs it."""

from __future__ import annotations

import random

import pytest
from batchserve_planning.load.generator import Run
from batchserve_planning.load.results import Summary, summarize
from batchserve_planning.load.shared import LoadSpec, Records
from batchserve_planning.openloop import answered_enough


def run(arrived: int, due: int, answered: int, *, window_s: float, jitter_ms: float,
        batch: float | None) -> Summary:
    latency = dict.fromkeys(("p10", "p50", "p90", "p99", "max", "mean"), 30.0)
    return Summary(mode="open", concurrency=16, rate=arrived / window_s, processes=1, rows_per_request=1,
                   window_s=window_s, requests=arrived, throughput_rps=answered / window_s,
                   ok_rps=answered / window_s, rows_per_s=answered / window_s, latency_ms=latency,
                   status_counts={"200": arrived}, error_rate=0.0, error_examples={}, send_lag_ms={},
                   max_backlog=0, mean_batch_size=batch, due=due, jitter_ms=jitter_ms)


def test_a_server_that_kept_up_is_not_turned_away_by_its_windows_ends() -> None:
    # At 100/s, half the capacity: 29 arrived in the window and 24 answers came in it (83%), as 9
    # of 30 first windows there did under 95%; 25 were due at the median latency.
    assert answered_enough([run(29, 25, 24, window_s=0.304, jitter_ms=5.9, batch=2.07)])
    # Held against what was due, 2 of those 30 still fell under 95% by a few answers' jitter
    assert answered_enough([run(34, 37, 34, window_s=0.309, jitter_ms=5.8, batch=2.33)])
    # Answers land a batch at a time: at batch 8, up to 8 of them fall on either side of an end
    assert answered_enough([run(60, 60, 51, window_s=1.0, jitter_ms=1.0, batch=8.0)])


def test_a_server_falling_behind_is_not_within() -> None:
    # At 230/s, 15% over the capacity: it answers at its own rate (60 in the window) while 77 were due
    assert not answered_enough([run(74, 77, 60, window_s=0.305, jitter_ms=19.3, batch=3.87)])


def test_at_scale_the_share_bar_holds() -> None:
    # 3,000 arrivals at 2 ms of jitter: the count's noise is under 1%, so 95% is the bar
    assert answered_enough([run(3000, 3000, 2860, window_s=3.0, jitter_ms=2.0, batch=16.0)])
    assert not answered_enough([run(3000, 3000, 2700, window_s=3.0, jitter_ms=2.0, batch=16.0)])


def test_the_runs_are_pooled() -> None:
    # One run short and one more that answered all it was due: the pooled share decides
    first = run(40, 40, 33, window_s=2.0, jitter_ms=1.0, batch=1.0)
    assert not answered_enough([first])
    assert answered_enough([first, run(400, 400, 400, window_s=2.0, jitter_ms=1.0, batch=1.0)])


def test_due_is_the_arrivals_shifted_by_the_median_latency() -> None:
    # Poisson arrivals at 100/s, each answered 40 ms later: a server that keeps up exactly. The
    # window's own arrivals differ from the answers it received (its ends), what was due does not.
    draw = random.Random(1)
    records, now = Records(), 0.0
    while now < 1.3:
        records.add(now, now, now + 0.040, 200)
        now += draw.expovariate(100.0)
    spec = LoadSpec("127.0.0.1", 1, (b"",), mode="open", rate=100.0, duration_s=1.0, warmup_s=0.3)
    summary = summarize(Run(spec, records, measure_start=0.3, stop_at=1.3, processes=1))
    answered = round(summary.ok_rps * summary.window_s)
    assert summary.requests != answered  # the ends' counts differ in this draw...
    assert summary.due == answered  # ...and the shift takes them out
    assert summary.jitter_ms == pytest.approx(0.0, abs=1e-6)
