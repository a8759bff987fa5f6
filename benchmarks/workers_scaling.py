"""Worker processes on a many-core machine: diabetes at 1, 2, 4, 8 and 12 workers, and Triton
(PyTriton) on the same cores, in one unedited run of about 5 minutes (issue 11's 16-core part).

The server gets SERVER_CPUS (default: every core this process may use but the last LOAD_CPUS,
4 by default: cores 0-11 of a 16-core machine), wrk the rest (one wrk thread a core). One
diabetes row per POST, CONNECTIONS keep-alive connections (enough for 12 workers). Each worker
count is measured ROUNDS times, the counts alternating, so drift hits them all. For each run:
requests/s, p50/p99, the server's CPU time per request (supervisor and workers, user + system)
and the machine's idle share (near 0: the cores, not the server, capped the run).

Targets (issue 11): RPS at 12 workers >= 0.8 x 12 x the 1-worker RPS (the "efficiency" column);
batchserve at the most workers >= 1.5x Triton's RPS on the same cores, p99 no worse. Triton runs
only where benchmarks/peers.py installed its virtual environment (it needs the package index,
which a machine without a network lacks): otherwise the report says it was skipped, and why.
The transformer on a GPU with 1 vs 8 workers is gpu_check.py's part, not this script's.

Usage: .venv/bin/python benchmarks/workers_scaling.py
       .venv/bin/python benchmarks/workers_scaling.py --dry-run   (any machine: 1 and 2 workers,
       wrk sharing the cores, 2 s runs: proves the script runs)
Writes benchmarks/results/workers-scaling-<time>.json; a run with any non-2xx answer fails.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import harness
import psutil
from batchserve_planning.loadtest import cpu_set
from batchserve_planning.serverproc import ManagedServer

DRY_RUN = "--dry-run" in sys.argv[1:]
ALL = sorted(os.sched_getaffinity(0))
LOAD_CPUS = int(os.environ.get("LOAD_CPUS", "0" if DRY_RUN else "4"))
SERVER_CPUS = cpu_set(os.environ["SERVER_CPUS"]) if "SERVER_CPUS" in os.environ else set(
    ALL[:len(ALL) - LOAD_CPUS] if LOAD_CPUS else ALL)
WRK_CPUS = set(ALL) - SERVER_CPUS or set(ALL)  # the dry run shares the cores
COUNTS = [int(n) for n in os.environ.get("WORKER_COUNTS", "1,2" if DRY_RUN else "1,2,4,8,12").split(",")]
CONNECTIONS = int(os.environ.get("CONNECTIONS", "16" if DRY_RUN else "256"))
DURATION_S = int(os.environ.get("DURATION_S", "2" if DRY_RUN else "10"))
WARMUP_S = int(os.environ.get("WARMUP_S", "1" if DRY_RUN else "3"))
ROUNDS = int(os.environ.get("ROUNDS", "1" if DRY_RUN else "2"))


def taskset(cpus: set[int]) -> str:
    return ",".join(str(cpu) for cpu in sorted(cpus))


def models_toml(directory: Path) -> Path:
    artifact = harness.demo_artifact("diabetes")
    path = directory / "models.toml"
    path.write_text(f'[repository]\nroot = "{artifact.parent}"\n\n[[models]]\nname = "diabetes"\n'
                    f'backend = "sklearn"\npath = "{artifact}"\nmax_batch_size = 64\nmax_wait_ms = 0\n'
                    "max_queue = 4096\n")
    return path


def measured(url: str, script: str | Path, pids: list[int]) -> dict[str, Any]:
    result = harness.measured_wrk(url, warmup_s=WARMUP_S, duration_s=DURATION_S, connections=CONNECTIONS,
                                  script=script, core=taskset(WRK_CPUS), threads=len(WRK_CPUS), pids=pids)
    harness.check_clean(result, url)
    return result


def measure_batchserve(config: Path, workers: int) -> dict[str, Any]:
    server = ManagedServer(config, cpus=SERVER_CPUS, grace_s=10, args=["--workers", str(workers)])
    try:
        server.wait_ready(timeout_s=300)
        supervisor = psutil.Process(server.process.pid)
        return measured(f"{server.url}/predict", "post.lua",
                        [supervisor.pid, *(child.pid for child in supervisor.children())])
    finally:
        server.stop()


def measure_triton(artifact: Path) -> dict[str, Any] | str:
    """Triton on SERVER_CPUS, or why it was skipped."""
    os.environ["SERVER_CORE"] = taskset(SERVER_CPUS)  # peers.py pins its servers there
    import peers

    if not (peers.VENVS / "triton" / "bin" / "python").exists():
        return (f"skipped: no PyTriton environment at {peers.VENVS / 'triton'} "
                "(benchmarks/peers.py installs it)")
    with peers.running("triton", artifact) as (url, lua, process):
        leader = psutil.Process(process.pid)
        return measured(url, lua, [leader.pid, *(child.pid for child in leader.children(recursive=True))])


def main() -> None:
    counts = [n for n in COUNTS if n <= len(SERVER_CPUS) or DRY_RUN]
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in counts}
    triton: list[dict[str, Any]] = []
    skipped = None
    with tempfile.TemporaryDirectory() as folder:
        config = models_toml(Path(folder))
        try:
            for _ in range(ROUNDS):
                for workers in counts:
                    runs[workers].append(measure_batchserve(config, workers))
                if skipped is None:
                    outcome = measure_triton(harness.demo_artifact("diabetes"))
                    if isinstance(outcome, str):
                        skipped = outcome
                    else:
                        triton.append(outcome)
        except harness.UncleanRun as exc:
            sys.exit(f"workers_scaling: {exc}")
    median = {n: {key: statistics.median(r[key] for r in results) for key in
                  ("rps", "p50_ms", "p99_ms", "cpu_us_per_request", "idle")} for n, results in runs.items()}
    one = median[counts[0]]["rps"] / counts[0]
    summary: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": harness.commit(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "server_cpus": taskset(SERVER_CPUS), "wrk_cpus": taskset(WRK_CPUS),
        "settings": {"connections": CONNECTIONS, "duration_s": DURATION_S, "rounds": ROUNDS},
        "runs": runs, "medians": median, "triton": triton or skipped,
    }
    print(f"\n{summary['date']}, commit {summary['commit']}, {summary['machine']}; server on cores "
          f"{summary['server_cpus']}, wrk -t{len(WRK_CPUS)} -c{CONNECTIONS} on {summary['wrk_cpus']}, "
          f"{ROUNDS} rounds of {DURATION_S} s (medians)\n")
    print("| server | RPS | p50 ms | p99 ms | CPU us / request | machine idle "
          "| efficiency (RPS / n x 1 worker's) |")
    print("|---|---|---|---|---|---|---|")
    for workers, row in median.items():
        print(f"| batchserve, {workers} worker(s) | {row['rps']:,.0f} | {row['p50_ms']:.2f} | "
              f"{row['p99_ms']:.2f} | {row['cpu_us_per_request']:.0f} | {row['idle']:.0%} | "
              f"{row['rps'] / (workers * one):.2f} |")
    most = median[counts[-1]]
    if triton:
        rps, p99 = (statistics.median(r[key] for r in triton) for key in ("rps", "p99_ms"))
        print(f"| Triton (PyTriton), the same cores | {rps:,.0f} | — | {p99:.2f} | — | — | — |")
        print(f"\nbatchserve at {counts[-1]} workers / Triton: **{most['rps'] / rps:.2f}x** RPS "
              f"(target >= 1.5), p99 {most['p99_ms']:.2f} vs {p99:.2f} ms")
    else:
        print(f"\nTriton: {skipped}")
    print(f"{counts[-1]} workers: efficiency **{most['rps'] / (counts[-1] * one):.2f}** (target >= 0.8)")
    print(f"wrote {harness.save_results('workers-scaling', summary)}")


if __name__ == "__main__":
    main()
