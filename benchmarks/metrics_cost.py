"""What batchserve's metrics cost on the hot path, per request and per batch.

Per request: the status counter, the end-to-end histogram and the queue-wait
histogram; per batch: the dispatch counter and two histograms. Compare with
the per-request CPU time at the floor (benchmarks/README.md, ~100 us here).

Usage: .venv/bin/python benchmarks/metrics_cost.py
A worker of a multi-process server writes every value to an mmap file instead
(prometheus-client's multiprocess mode); measure that with
PROMETHEUS_MULTIPROC_DIR=$(mktemp -d) .venv/bin/python benchmarks/metrics_cost.py
"""

from __future__ import annotations

import timeit

from batchserve.metrics import Metrics

REPEATS = 200_000


def main() -> None:
    metrics = Metrics(max_batch_size=64).for_model("m")

    def per_request() -> None:
        metrics.count_request(200)
        metrics.request_duration.observe(0.004)
        metrics.queue_wait.observe(0.002)

    def per_batch() -> None:
        metrics.dispatch["idle"].inc()
        metrics.batch_size.observe(31)
        metrics.batch_duration.observe(0.0003)

    request_us = min(timeit.repeat(per_request, number=REPEATS, repeat=3)) / REPEATS * 1e6
    batch_us = min(timeit.repeat(per_batch, number=REPEATS, repeat=3)) / REPEATS * 1e6
    print(f"metrics per request: {request_us:.2f} us; per batch: {batch_us:.2f} us "
          f"({batch_us / 30:.3f} us per request at 30 rows per batch)")


if __name__ == "__main__":
    main()
