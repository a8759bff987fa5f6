"""openloop.peak_rate against a real server whose capacity is known by construction: the echo
backend sleeping 20 ms per batch, batches of one, one instance, carries at most 1000/20 = 50
requests per second however fast the machine is.

The bounds are structural: sustained arrivals above capacity grow a queue without end (a short
step can hide a little of it, hence 1.2x), and at 0.3x capacity a 20 ms service time is far
inside a 250 ms p99; nothing here is timed.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from batchserve_planning.load.inputs import Sample, build_requests
from batchserve_planning.load.progress import Bars
from batchserve_planning.openloop import measure_open, peak_rate
from batchserve_planning.ramp import RampSettings

from tests.support import ServerProcess, running_server, write_models

DELAY_MS = 20.0
CAPACITY_RPS = 1000 / DELAY_MS
SLO_MS = 250.0
SETTINGS = RampSettings(slo_ms=SLO_MS, max_concurrency=64, step_s=1.0, min_responses=60, max_step_s=3.0,
                        warmup_s=0.3)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    config = write_models(tmp_path_factory.mktemp("openloop") / "models.toml", [
        {"name": "echo", "backend": "echo", "path": "unused", "max_batch_size": 1, "instances": 1,
         "options": {"delay_ms": DELAY_MS}}])
    with running_server(config) as running:
        yield running


def test_the_peak_within_the_slo_lies_below_the_known_capacity(server: ServerProcess) -> None:
    requests = build_requests([Sample(1.0), Sample(2.0)], host="127.0.0.1", port=server.port, model="echo")
    with Bars(False) as bars:
        peak = peak_rate(server.url, "echo", requests, SETTINGS, CAPACITY_RPS / 5, bars, "echo")
    assert peak.rate_rps is not None
    assert 0.3 * CAPACITY_RPS <= peak.rate_rps <= 1.2 * CAPACITY_RPS
    rates = [step.offered_rps for step in peak.steps]
    # The search went up, then came back down (bisecting), within its step budget.
    assert any(b > a for a, b in itertools.pairwise(rates))
    assert any(b < a for a, b in itertools.pairwise(rates))
    assert len(rates) <= 8
    # The peak is the highest rate tried within the SLO, the limit the lowest outside it, above it.
    assert peak.rate_rps == max(s.offered_rps for s in peak.steps if s.within_slo)
    assert peak.limit_rps is not None and peak.limit_rps > peak.rate_rps
    assert peak.limit_rps == min(s.offered_rps for s in peak.steps if not s.within_slo)
    for step in peak.steps:
        assert step.error_rate == 0
        if step.p99_ms > SLO_MS or (step.p99_high or 0) > SLO_MS:  # a step outside the SLO is marked so
            assert not step.within_slo
        assert step.windows >= 3 and step.carried_low is not None and step.carried_high is not None
        assert step.carried_low <= step.carried_rps <= step.carried_high
        # one row per request, batches of one
        assert step.rows_per_s == pytest.approx(step.carried_rps)
        assert step.mean_batch_size == pytest.approx(1.0)
    # Some step saw the SLO broken: in the highest p99 of its windows, which rules it out.
    assert any(step.p99_high is not None and step.p99_high > SLO_MS for step in peak.steps)
    assert peak.to_dict()["steps"][0]["offered_rps"] == rates[0]


def test_a_rate_twice_the_capacity_is_outside_the_slo_and_carried_at_most_at_capacity(
        server: ServerProcess) -> None:
    requests = build_requests([Sample(3.0)], host="127.0.0.1", port=server.port, model="echo")
    with Bars(False) as bars:
        step = measure_open(server.url, "echo", requests, 2 * CAPACITY_RPS, SETTINGS, bars, "echo x2")
    assert step.offered_rps == 2 * CAPACITY_RPS
    assert not step.within_slo
    # Answers come out at most at the capacity (a little over from the window's edges), half of
    # what arrived: the queue, which latency from arrival counts.
    assert step.carried_rps <= 1.2 * CAPACITY_RPS
    assert step.carried_rps < 0.95 * step.arrived_rps


def test_a_service_time_longer_than_the_slo_has_no_peak(server: ServerProcess) -> None:
    # Every answer takes at least the 20 ms sleep: a 10 ms p99 is out of reach at any rate, though
    # the server carries what arrives at these low rates.
    settings = RampSettings(slo_ms=DELAY_MS / 2, max_concurrency=16, step_s=1.0, min_responses=10,
                            max_step_s=2.0, warmup_s=0.2)
    requests = build_requests([Sample(4.0)], host="127.0.0.1", port=server.port, model="echo")
    with Bars(False) as bars:
        peak = peak_rate(server.url, "echo", requests, settings, 0.2 * CAPACITY_RPS, bars, "echo",
                         max_steps=3)
    assert peak.rate_rps is None
    rates = [step.offered_rps for step in peak.steps]
    assert rates == pytest.approx([10.0, 6.0, 3.6])  # down x0.6 while outside, within its 3 steps
    assert peak.limit_rps == pytest.approx(3.6)
    for step in peak.steps:
        assert step.p99_ms >= DELAY_MS and not step.within_slo
        assert step.error_rate == 0
    assert peak.to_dict()["rate_rps"] is None
