"""What a successful request adds to the metrics: its count by the end of the loop turn, its
duration and its stages."""

from __future__ import annotations

import asyncio

from batchserve.metrics import STAGES, Metrics


def test_successes_are_counted_by_the_end_of_the_loop_turn() -> None:
    async def scenario() -> tuple[float | None, float | None, float | None]:
        metrics = Metrics(max_batch_size=8)
        children = metrics.for_model("m")
        for duration_s in (0.002, 0.004, 0.2):
            children.request_succeeded(duration_s, [duration_s / len(STAGES)] * len(STAGES))
        await asyncio.sleep(0)
        get = metrics.registry.get_sample_value
        return (get("batchserve_requests_total", {"model": "m", "code": "200"}),
                get("batchserve_request_duration_seconds_count", {"model": "m"}),
                get("batchserve_request_duration_seconds_sum", {"model": "m"}))

    requests, count, total = asyncio.run(scenario())
    assert requests == 3
    assert count == 3
    assert total is not None and abs(total - 0.206) < 1e-9


def test_each_stage_of_a_success_is_observed_under_its_name() -> None:
    async def scenario() -> Metrics:
        metrics = Metrics(max_batch_size=8)
        metrics.for_model("m").request_succeeded(0.021, [0.001, 0.002, 0.003, 0.004, 0.005, 0.006])
        await asyncio.sleep(0)
        return metrics

    get = asyncio.run(scenario()).registry.get_sample_value
    sums = [get("batchserve_stage_duration_seconds_sum", {"model": "m", "stage": stage})
            for stage in STAGES]
    assert sums == [0.001, 0.002, 0.003, 0.004, 0.005, 0.006]
    assert STAGES == ("body", "decode", "compute_input", "queue", "compute_infer", "compute_output")
