"""Does a re-run agree with its prediction? One step against a checked figure, beside a CPU hog.

``recommend`` predicts the pick's throughput in its final round and checks it by starting the
pick again (``sweep.verify``); the re-run holds when it is within 10%. This measures how often
that can hold for a configuration whose capacity does not change, measured two ways, in the
same run, alternating round by round:

- **one step**: a fresh server measured for one step three ramp steps long (4.5 s, its windows
  in agreement), then another fresh server the same way: how the final round and the re-run
  were measured before the twelfth session;
- **checked**: the same two servers, each measured in runs until their mean is known
  (``batchserve_planning.checked``: standard error within 3%, 2 to 8 runs, 3 at least where
  the contention probe saw other work).

The configuration is diabetes at batch 8, wait 0 ms, one worker, 128 clients; the background
load is one process spinning per core, in sessions of their own, outside this process's tree.
It prints, per way, the ratios re-run / prediction, how many were within 10%, the seconds a
figure took, and every run's throughput (consecutive steps on one server: the drift).

Usage: .venv/bin/python benchmarks/step_drift.py   ROUNDS=6  LOAD=1 (0: no background load)
Writes benchmarks/results/step-drift-<time>.json.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

import harness
from batchserve_planning.checked import measure_checked
from batchserve_planning.load.inputs import build_requests, load_samples
from batchserve_planning.ramp import RampSettings, Step, measure_step
from batchserve_planning.serverproc import ManagedServer

ROOT = Path(__file__).resolve().parents[1]
CLIENTS = 128
SLO_MS = 20.0


def figure(config: Path, samples: list[Any], settings: RampSettings,
           checked: bool) -> tuple[Step, list[float], float]:
    """One figure on a fresh server: the step, each run's throughput, and the seconds it took."""
    started = time.monotonic()
    runs: list[float] = []
    server = ManagedServer(config)
    try:
        server.wait_ready()
        host, _, port = server.url.removeprefix("http://").partition(":")
        requests = build_requests(samples, host=host, port=int(port), model="diabetes")

        def one() -> Step:
            step = measure_step(server.url, "diabetes", requests, CLIENTS, settings, None, "step",
                                duration_s=3 * settings.step_s, min_responses=3 * settings.min_responses)
            runs.append(step.rows_per_s)
            return step

        step = measure_checked(one, SLO_MS) if checked else one()
    finally:
        server.stop()
    return step, runs, time.monotonic() - started


def main() -> None:
    rounds = int(os.environ.get("ROUNDS", "6"))
    loaded = os.environ.get("LOAD", "1") == "1"
    work, config = harness.workspace("step-drift", 8)
    samples = load_samples(harness.diabetes_rows(work / "rows.jsonl"), "rows")
    settings = RampSettings(slo_ms=SLO_MS)
    commit, started = harness.commit(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results: dict[str, list[dict[str, Any]]] = {"one step": [], "checked": []}
    with harness.background_load(loaded):
        for index in range(rounds):
            for way in (["one step", "checked"] if index % 2 == 0 else ["checked", "one step"]):
                predicted, predicted_runs, predicted_s = figure(config, samples, settings, way == "checked")
                rerun, rerun_runs, rerun_s = figure(config, samples, settings, way == "checked")
                ratio = rerun.rows_per_s / predicted.rows_per_s
                results[way].append({"ratio": ratio, "within_10pct": abs(ratio - 1) <= 0.10,
                                     "others_cpu": [predicted.others_cpu, rerun.others_cpu],
                                     "predicted": predicted_runs, "rerun": rerun_runs,
                                     "seconds": [predicted_s, rerun_s]})
                print(f"round {index + 1} {way}: {ratio:.2f}x  prediction {predicted_runs}  "
                      f"re-run {rerun_runs}", flush=True)
    print(f"\ncommit {commit}, started {started}, background load: {'yes' if loaded else 'no'}\n")
    print("| way | re-runs within 10% | ratios re-run / prediction | runs per figure | seconds per figure |")
    print("|---|---|---|---|---|")
    for way, entries in results.items():
        ratios = sorted(e["ratio"] for e in entries)
        counts = [len(e[k]) for e in entries for k in ("predicted", "rerun")]
        seconds = [s for e in entries for s in e["seconds"]]
        print(f"| {way} | {sum(e['within_10pct'] for e in entries)} of {len(entries)} | "
              f"{', '.join(f'{r:.2f}' for r in ratios)} | {min(counts)}-{max(counts)} | "
              f"{statistics.mean(seconds):.0f} ({min(seconds):.0f}-{max(seconds):.0f}) |")
    steps = [v for e in results["checked"] for k in ("predicted", "rerun") for v in e[k]]
    if len(steps) > 1:
        cv = statistics.stdev(steps) / statistics.mean(steps)
        print(f"\nConsecutive steps on one server (checked figures' runs): "
              f"{min(steps):,.0f}-{max(steps):,.0f} rows/s, coefficient of variation {cv:.1%}")
    harness.save_results("step-drift", {"commit": commit, "started": started, "loaded": loaded,
                                        "clients": CLIENTS, "results": results})


if __name__ == "__main__":
    main()
