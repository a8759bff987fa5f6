"""Is a checked figure's noise each run's own, or does a longer run average it out?

A checked figure (``batchserve_planning.checked``) is a series of runs on one server, each three
ramp steps long (``finals``), until the standard error of their mean is within 3%. Beside a CPU
hog its runs spread 8-16% (diabetes, 2026-12-07), as much as ramp steps a third as long did
(8.3%, ``step_drift.py``): if the spread does not shrink with a run's length, shorter runs pin a
mean down sooner for the same seconds (the standard error falls with the square root of the runs).

This measures it on one server: runs of one ramp step (``measure_step`` as the ramp measures) and
of three (as the checks measure), alternating, ROUNDS of each, and prints per length the runs'
throughput, their coefficient of variation, their mean seconds, and the standard error a mean
would reach in 60 s of such runs (cv / sqrt(60 / seconds)): the lower, the better a use of time.

The configuration is the diabetes pick beside the hog (batch 64, wait 0 ms, one worker, 64
clients); the background load is one process spinning per core, outside this process's tree.

Usage: .venv/bin/python benchmarks/run_length.py   ROUNDS=12  LOAD=1 (0: no background load)
  CLIENTS=64
Writes benchmarks/results/run-length-<time>.json.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from pathlib import Path
from typing import Any

import harness
from batchserve_planning.load.inputs import build_requests, load_samples
from batchserve_planning.ramp import RampSettings, measure_step
from batchserve_planning.serverproc import ManagedServer

ROOT = Path(__file__).resolve().parents[1]
SLO_MS = 20.0
LENGTHS = {"one step": 1, "three steps": 3}


def main() -> None:
    rounds = int(os.environ.get("ROUNDS", "12"))
    loaded = os.environ.get("LOAD", "1") == "1"
    clients = int(os.environ.get("CLIENTS", "64"))
    work, config = harness.workspace("run-length", 64)
    samples = load_samples(harness.diabetes_rows(work / "rows.jsonl"), "rows")
    settings = RampSettings(slo_ms=SLO_MS)
    commit, started = harness.commit(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in LENGTHS}
    with harness.background_load(loaded):
        server = ManagedServer(config)
        try:
            server.wait_ready()
            host, _, port = server.url.removeprefix("http://").partition(":")
            requests = build_requests(samples, host=host, port=int(port), model="diabetes")
            for index in range(rounds):
                names = list(LENGTHS) if index % 2 == 0 else list(reversed(LENGTHS))
                for name in names:
                    times = LENGTHS[name]
                    began = time.monotonic()
                    step = measure_step(server.url, "diabetes", requests, clients, settings, None, name,
                                        duration_s=times * settings.step_s,
                                        min_responses=times * settings.min_responses)
                    runs[name].append({"rows_per_s": step.rows_per_s, "p99_high": step.p99_high,
                                       "seconds": time.monotonic() - began, "others_cpu": step.others_cpu})
                    print(f"round {index + 1} {name}: {step.rows_per_s:,.0f} rows/s, p99 (highest) "
                          f"{step.p99_high} ms, {runs[name][-1]['seconds']:.1f} s", flush=True)
        finally:
            server.stop()
    print(f"\ncommit {commit}, started {started}, background load: {'yes' if loaded else 'no'}, "
          f"{clients} clients\n")
    print("| run length | runs | rows/s mean (range) | cv | seconds a run | standard error in 60 s |"
          " p99 highest, median (range) |")
    print("|---|---|---|---|---|---|---|")
    for name, entries in runs.items():
        rates = [e["rows_per_s"] for e in entries]
        cv = statistics.stdev(rates) / statistics.mean(rates)
        seconds = statistics.mean(e["seconds"] for e in entries)
        highs = [e["p99_high"] for e in entries if e["p99_high"] is not None]
        spread = f"{statistics.mean(rates):,.0f} ({min(rates):,.0f}-{max(rates):,.0f})"
        print(f"| {name} | {len(rates)} | {spread} | "
              f"{cv:.1%} | {seconds:.1f} | {cv / math.sqrt(60 / seconds):.1%} | "
              f"{statistics.median(highs):.1f} ({min(highs):.1f}-{max(highs):.1f}) |")
    harness.save_results("run-length", {"commit": commit, "started": started, "loaded": loaded,
                                        "clients": clients, "runs": runs})


if __name__ == "__main__":
    main()
