"""What a successful request adds to the metrics: its count by the end of the loop turn, its
duration and its stages."""

from __future__ import annotations

import asyncio

import pytest
from batchserve.metrics import STAGES, Metrics
from batchserve.metrics_bulk import Histograms
from prometheus_client import CollectorRegistry


def shown(metrics: Metrics) -> CollectorRegistry:
    """The metrics as ``/metrics`` shows them: the bulk histograms as histograms."""
    registry = CollectorRegistry()
    registry.register(Histograms(metrics.registry))
    return registry


def test_successes_are_counted_by_the_end_of_the_loop_turn() -> None:
    async def scenario() -> tuple[float | None, float | None, float | None]:
        metrics = Metrics(max_batch_size=8)
        children = metrics.for_model("m")
        for duration_s in (0.002, 0.004, 0.2):  # arrived at 100 s, each stage a sixth of it
            step_s = duration_s / len(STAGES)
            children.request_succeeded([100.0 + step * step_s for step in range(len(STAGES) + 1)])
        await asyncio.sleep(0)
        get = shown(metrics).get_sample_value
        return (get("batchserve_requests_total", {"model": "m", "code": "200"}),
                get("batchserve_request_duration_seconds_count", {"model": "m"}),
                get("batchserve_request_duration_seconds_sum", {"model": "m"}))

    requests, count, total = asyncio.run(scenario())
    assert requests == 3
    assert count == 3
    assert total == pytest.approx(0.206, abs=1e-9)


def test_each_stage_of_a_success_is_observed_under_its_name() -> None:
    async def scenario() -> Metrics:
        metrics = Metrics(max_batch_size=8)
        # arrived at 10 s; its stages took 1, 2, 3, 4, 5 and 6 ms
        metrics.for_model("m").request_succeeded([10.0, 10.001, 10.003, 10.006, 10.01, 10.015, 10.021])
        await asyncio.sleep(0)
        return metrics

    get = shown(asyncio.run(scenario())).get_sample_value
    sums = [get("batchserve_stage_duration_seconds_sum", {"model": "m", "stage": stage})
            for stage in STAGES]
    assert sums == pytest.approx([0.001, 0.002, 0.003, 0.004, 0.005, 0.006], abs=1e-9)
    assert get("batchserve_request_duration_seconds_sum", {"model": "m"}) == pytest.approx(0.021, abs=1e-9)
    assert STAGES == ("body", "decode", "compute_input", "queue", "compute_infer", "compute_output")


def test_bulk_histograms_match_observing_one_at_a_time() -> None:
    from batchserve.metrics import LATENCY_BUCKETS_S
    from batchserve.metrics_bulk import BulkHistogram
    from prometheus_client import Histogram
    from prometheus_client.exposition import generate_latest

    amounts = [0.0, 0.0005, 0.0004999, 0.0005001, 0.003, 0.003, 9.99, 30.0, 31.0, 1e9]
    one_registry, bulk_registry = CollectorRegistry(), CollectorRegistry()
    one = Histogram("h", "h", ["model"], buckets=LATENCY_BUCKETS_S, registry=one_registry).labels("m")
    bulk = BulkHistogram("h", "h", ["model"], LATENCY_BUCKETS_S, bulk_registry).labels("m")
    for amount in amounts[:4]:
        one.observe(amount)
        bulk.observe(amount)
    bulk.flush()
    for amount in amounts[4:]:
        one.observe(amount)
        bulk.observe(amount)
    bulk.flush()

    def samples(text: bytes) -> dict[str, float]:
        return {series: float(value) for series, _, value in
                (line.rpartition(" ") for line in text.decode().splitlines())
                if series.startswith("h_") and "_created" not in series}

    bulk_samples = samples(generate_latest(shown_of(bulk_registry)))
    one_samples = samples(generate_latest(one_registry))
    assert bulk_samples.keys() == one_samples.keys()
    for series, value in one_samples.items():  # the sum's additions come in another order
        assert bulk_samples[series] == pytest.approx(value, rel=1e-12), series


def shown_of(registry: CollectorRegistry) -> CollectorRegistry:
    view = CollectorRegistry()
    view.register(Histograms(registry))
    return view
