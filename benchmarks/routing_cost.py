"""What resolving a request to a version costs, in-process (no sockets, no model): a model
without versions (the lookup every request made before versions), a model with two versions
routed at random by weight, and one routed by an ``X-Routing-Key``'s hash; alternating rounds,
each a ratio to the model without versions in the same round.

Usage: .venv/bin/python benchmarks/routing_cost.py   (seconds)
Settings by environment: ROUNDS (5), CALLS (200000).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import harness
from batchserve.config import load_models
from batchserve.metrics import Metrics
from batchserve.registry import ModelRegistry
from batchserve.routing import Router

ROUNDS = int(os.environ.get("ROUNDS", "5"))
CALLS = int(os.environ.get("CALLS", "200000"))
MODELS = """[[models]]
name = "plain"
backend = "sklearn"
path = "m.joblib"

[[models]]
name = "two"
backend = "sklearn"
path = "m.joblib"
versions = [{ version = "1", weight = 0.9 }, { version = "2", weight = 0.1 }]
"""


def per_call_ns(router: Router, name: str, key: str | None) -> float:
    resolve = router.resolve
    started = time.perf_counter_ns()
    for _ in range(CALLS):
        resolve(name, None, key)
    return (time.perf_counter_ns() - started) / CALLS


def main() -> int:
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "models.toml"
        config.write_text(MODELS)
        router = Router(ModelRegistry(load_models(config), Metrics(max_batch_size=1)))
    cases = {"one version": ("plain", None), "two, by weight": ("two", None),
             "two, by X-Routing-Key": ("two", "user-12345")}
    runs: dict[str, list[float]] = {case: [] for case in cases}
    for _ in range(ROUNDS):
        for case, (name, key) in cases.items():
            runs[case].append(per_call_ns(router, name, key))
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"\n{date}, commit {harness.commit()}; {ROUNDS} rounds of {CALLS:,} calls, alternating\n")
    print("| resolution | ns per request (each round) | median | minus one version's |")
    print("|---|---|---|---|")
    base = statistics.median(runs["one version"])
    for case, values in runs.items():
        median = statistics.median(values)
        print(f"| {case} | {', '.join(f'{v:.0f}' for v in values)} | {median:.0f} | {median - base:+.0f} |")
    harness.save_results("routing_cost", {"date": date, "commit": harness.commit(), "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
