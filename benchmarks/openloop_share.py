"""Does an open-loop step's answered-share rule tell a server falling behind from its own noise?

``recommend``'s open-loop search (``openloop.peak_rate``) counts a step within the SLO only where
it answered what arrived (``openloop.answered_enough``). Before 709db97 the rule was the first
window's 2xx answers at least 95% of its arrivals; the answers a window receives trail its
arrivals by their latency, so at a few dozen arrivals the counts at its two ends alone moved that
share by 10% and more, and ``recommend --hardware``'s test once put a peak at a third of capacity.

This measures it where the capacity is known: the test suite's echo backend (``tests/plugins``: a
batch of up to 4 rows takes BATCH_MS = 20 ms whatever its size, 200 rows/s), one row a request,
open-loop steps as that test measures them (0.3 s, at least 20 answers, at most 0.6 s, windows
until they agree), STEPS steps at each of RATES (arrivals per second, below and above the
capacity), each step its own Poisson draw. Per rate it prints how many steps' first window
answered under 95% of its arrivals (the old rule's "not within"), under 95% of what was due at
the median latency (``Summary.due``), and how many the current rule turned away; and the p99s.
A rule that tells the two apart turns away none below the capacity and most above it.

Usage: .venv/bin/python benchmarks/openloop_share.py   RATES=100,170,200,230  STEPS=20
Writes benchmarks/results/openloop-share-<time>.json.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

import harness
from batchserve_planning import openloop
from batchserve_planning.load.inputs import build_requests, load_samples
from batchserve_planning.load.results import Summary
from batchserve_planning.ramp import RampSettings
from batchserve_planning.serverproc import ManagedServer

ROOT = Path(__file__).resolve().parents[1]
BATCH_MS, MAX_BATCH = 20.0, 4
MODEL = f"""[[models]]
name = "echo"
backend = "echo"
path = "x"
max_batch_size = {MAX_BATCH}
options = {{ delay_ms = {BATCH_MS} }}
"""


def first_windows(summaries: list[Summary]) -> dict[str, Any]:
    first = summaries[0]
    return {"arrived": first.requests, "due": first.due, "answered": round(first.ok_rps * first.window_s),
            "window_s": first.window_s, "runs": len(summaries)}


def main() -> None:
    rates = [float(r) for r in os.environ.get("RATES", "100,170,200,230").split(",")]
    steps = int(os.environ.get("STEPS", "20"))
    work = ROOT / "benchmarks" / "results" / "openloop-share"
    work.mkdir(parents=True, exist_ok=True)
    config, inputs = work / "models.toml", work / "numbers.json"
    config.write_text(MODEL)
    inputs.write_text("[1.0, 2.0, 3.0]")
    settings = RampSettings(slo_ms=250.0, max_concurrency=16, step_s=0.3, max_step_s=0.6, min_responses=20)
    commit, started = harness.commit(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    seen: list[dict[str, Any]] = []
    measured = openloop.OpenStep.of

    def recording(summaries: list[Summary], figure: Any, slo_ms: float, contention: Any = None,
                  ) -> openloop.OpenStep:
        step = measured(summaries, figure, slo_ms, contention)
        seen.append({**first_windows(summaries), "within": step.within_slo, "p99_ms": step.p99_ms})
        return step

    openloop.OpenStep.of = recording  # type: ignore[method-assign]
    results: dict[float, list[dict[str, Any]]] = {}
    server = ManagedServer(config, env={"PYTHONPATH": os.pathsep.join(
        [str(ROOT / "tests" / "plugins"), str(ROOT / "server")])})
    try:
        server.wait_ready()
        host, _, port = server.url.removeprefix("http://").partition(":")
        requests = build_requests(load_samples(inputs), host=host, port=int(port), model="echo")
        for rate in rates:
            seen.clear()
            for index in range(steps):
                openloop.measure_open(server.url, "echo", requests, rate, settings, None, "step",
                                      seed=index + 1)
            results[rate] = list(seen)
    finally:
        server.stop()
    capacity = MAX_BATCH * 1000 / BATCH_MS
    print(f"\ncommit {commit}, started {started}; echo backend, capacity {capacity:g}/s, "
          f"{steps} steps a rate\n")
    print("| offered /s | share of capacity | first window under 95% of arrivals | under 95% of due "
          "| not within (the rule) | p99, median (range) |")
    print("|---|---|---|---|---|---|")
    for rate, entries in results.items():
        old = sum(e["answered"] < 0.95 * e["arrived"] for e in entries)
        due = sum(e["answered"] < 0.95 * e["due"] for e in entries)
        out = sum(not e["within"] for e in entries)
        p99s = [e["p99_ms"] for e in entries]
        print(f"| {rate:g} | {rate / capacity:.0%} | {old} of {len(entries)} | {due} of {len(entries)} | "
              f"{out} of {len(entries)} | {statistics.median(p99s):.1f} ({min(p99s):.1f}-{max(p99s):.1f}) |")
    harness.save_results("openloop-share", {"commit": commit, "started": started, "capacity": capacity,
                                            "steps": {str(r): e for r, e in results.items()}})


if __name__ == "__main__":
    main()
