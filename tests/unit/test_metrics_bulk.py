"""Metrics observed in bulk on the hot path: the same samples as one observation at a time."""

from __future__ import annotations

import asyncio

from batchserve.metrics import LATENCY_BUCKETS_S, Metrics, observe_all
from prometheus_client import CollectorRegistry, Histogram


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in registry.collect() for s in family.samples if not s.name.endswith("_created")}


def test_observe_all_matches_observing_one_at_a_time() -> None:
    amounts = [0.0, 0.0005, 0.0004999, 0.0005001, 0.003, 0.003, 9.99, 30.0, 31.0, 1e9, -1.0]
    registries = CollectorRegistry(), CollectorRegistry()
    one, bulk = (Histogram("h", "h", ["model"], buckets=LATENCY_BUCKETS_S, registry=r).labels("m")
                 for r in registries)
    for amount in amounts:
        one.observe(amount)
    observe_all(bulk, amounts)
    assert _samples(registries[1]) == _samples(registries[0])
    assert _samples(registries[1])[("h_count", (("model", "m"),))] == len(amounts)


def test_successes_are_counted_by_the_end_of_the_loop_turn() -> None:
    async def scenario() -> tuple[float | None, float | None, float | None]:
        metrics = Metrics(max_batch_size=8)
        children = metrics.for_model("m")
        for duration_s in (0.002, 0.004, 0.2):
            children.request_succeeded(duration_s)
        await asyncio.sleep(0)
        get = metrics.registry.get_sample_value
        return (get("batchserve_requests_total", {"model": "m", "code": "200"}),
                get("batchserve_request_duration_seconds_count", {"model": "m"}),
                get("batchserve_request_duration_seconds_sum", {"model": "m"}))

    requests, count, total = asyncio.run(scenario())
    assert requests == 3
    assert count == 3
    assert total is not None and abs(total - 0.206) < 1e-9
