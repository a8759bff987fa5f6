"""Fleet sizing from measured figures: replicas, costs, memory, the pick and why others lost."""

from __future__ import annotations

import math

import pytest
from batchserve_planning.capacity import GIB, Load, Verdict, explain_losers, judge, memory_size, pick, size


def test_replicas_carry_the_target_with_the_headroom() -> None:
    load = Load(target_rps=1000.0, concurrency=None, rows_per_request=2, headroom=0.2)
    sizing = size(load, peak_rps=400.0, max_clients=16, peak_rss_bytes=300 * 2**20, price_per_hour=0.1,
                  memory_bytes=2 * GIB)
    assert sizing.per_replica_rps == pytest.approx(320.0)
    assert sizing.replicas == 4 == sizing.replicas_for_rate  # 1000 / 320 = 3.1 -> 4
    assert sizing.dollars_per_hour == pytest.approx(0.4)
    # 0.4 $/h over 1000 requests/s x 2 rows x 3600 s
    assert sizing.dollars_per_million == pytest.approx(0.4 / (1000 * 2 * 3600) * 1e6)
    assert sizing.memory_needed_bytes == math.ceil(300 * 2**20 * 1.25)
    assert sizing.memory_size_bytes == GIB // 2 and sizing.fits_memory


def test_an_exact_fit_needs_no_extra_replica_and_clients_can_need_more() -> None:
    assert size(Load(640.0, None, 1), 400.0, None, None, 1.0, GIB).replicas == 2
    both = size(Load(100.0, 70, 1), 400.0, 16, None, 1.0, GIB)
    assert both.replicas_for_rate == 1 and both.replicas_for_clients == 5 and both.replicas == 5
    nothing = size(Load(None, None, 1), 400.0, None, None, 1.0, GIB)
    assert nothing.replicas == 1 and nothing.served_rps == pytest.approx(320.0)


def test_memory_sizes_round_up_with_headroom() -> None:
    assert memory_size(GIB) == (math.ceil(1.25 * GIB), 2 * GIB)
    assert memory_size(100 * 2**20)[1] == GIB // 2


def test_the_pick_is_the_cheapest_that_carries_and_the_others_say_why() -> None:
    load = Load(1000.0, None, 1, max_replicas=8)
    small = size(load, 300.0, None, GIB, 0.05, 2 * GIB)    # 5 replicas x 0.05 = 0.25 $/h
    large = size(load, 700.0, None, GIB, 0.10, 4 * GIB)    # 2 replicas x 0.10 = 0.20 $/h
    tight = size(load, 2000.0, None, 3 * GIB, 0.01, 2 * GIB)  # cheapest, but 3.75 GiB > 2 GiB
    crowd = size(load, 10.0, None, GIB, 0.001, 2 * GIB)   # 125 replicas > 8
    verdicts = [judge("small", small, load, 2 * GIB, None), judge("large", large, load, 4 * GIB, None),
                judge("tight", tight, load, 2 * GIB, None), judge("crowd", crowd, load, 2 * GIB, None),
                judge("slow", None, load, GIB, "too slow for the SLO at any batch size")]
    chosen = pick(verdicts)
    assert chosen is not None and chosen.name == "large"
    why = explain_losers(verdicts, chosen)
    assert "more expensive" in why["small"] and "5 replicas" in why["small"]
    assert "GiB per replica" in why["tight"]
    assert "--max-replicas 8" in why["crowd"]
    assert why["slow"] == "too slow for the SLO at any batch size"
    assert pick([Verdict("x", False, "no")]) is None


def test_a_service_time_that_varies_gets_more_headroom_and_longer_steps() -> None:
    from batchserve_planning.capacity import variance_headroom, variance_responses

    assert variance_headroom(0.2, None) == 0.2  # nothing measured: as given
    assert variance_headroom(0.2, 0.0) == 0.2  # every request the same cost
    assert variance_headroom(0.2, 0.8) == pytest.approx(0.2 * 1.64)  # mixed lengths: x (1 + cv^2)
    assert variance_headroom(0.2, 3.0) == 0.5  # at most half the peak kept free
    assert variance_headroom(0.6, 0.5) == 0.6  # never less than asked for
    assert variance_responses(300, None) == 300
    assert variance_responses(300, 1.0) == 600
