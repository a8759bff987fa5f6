"""Is `batchserve loadtest`'s load generator ever the bottleneck? Measured against wrk, in one run.

Each server is pinned to SERVER_CORE and every load generator to LOAD_CORE, with
CONNECTIONS keep-alive connections POSTing one diabetes row per request:

- batchserve (diabetes, max_batch_size 64): its peak here, as wrk measures it;
- the HTTP floor (benchmarks/floor_app.py, a bare FastAPI endpoint);
- the wire floor (benchmarks/wire_floor.py): frames requests and answers a constant,
  the cheapest server there is, to find the generator's own ceiling on one core.

For each server, wrk and our generator (server/batchserve_planning/load/generator.py, run as
`batchserve loadtest` runs it, in a process pinned to LOAD_CORE) alternate, ROUNDS
times. The generator's CPU time per request (user + system, whole process, warm-up
and start-up included) gives its capacity per core independently of any server.

Usage: .venv/bin/python benchmarks/loadgen_capacity.py   (needs wrk; ~3 minutes)
Prints a markdown table and writes benchmarks/results/loadgen_capacity-<time>.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import harness

ROOT = Path(__file__).resolve().parent.parent
SERVER_CORE = os.environ.get("SERVER_CORE", "0")
LOAD_CORE = os.environ.get("LOAD_CORE", "1")
CONNECTIONS = int(os.environ.get("CONNECTIONS", "64"))
DURATION_S = float(os.environ.get("DURATION_S", "8"))
WARMUP_S = float(os.environ.get("WARMUP_S", "2"))
ROUNDS = int(os.environ.get("ROUNDS", "2"))
PROCESSES = int(os.environ.get("PROCESSES", "1"))
PORT = int(os.environ.get("PORT", "0"))
"""0: a free port for each server start (other work on this machine takes fixed ones)."""
BODY = (ROOT / "benchmarks" / "post.lua").read_text().split("wrk.body = '")[1].split("'")[0].encode()
"""What wrk sends (benchmarks/post.lua): {"model": "diabetes", "inputs": [[...10 features...]]}."""
SERVERS = ("batchserve", "floor", "wire")


@contextlib.contextmanager
def _running(kind: str, config: Path, port: int) -> Iterator[None]:
    if kind == "batchserve":
        with harness.serve(config, port, core=SERVER_CORE):
            yield
        return
    python = sys.executable
    command = {
        "floor": [python, "-m", "uvicorn", "benchmarks.floor_app:app", "--port", str(port),
                  "--log-level", "warning", "--no-access-log", "--loop", "uvloop", "--http", "httptools"],
        "wire": [python, str(ROOT / "benchmarks" / "wire_floor.py"), str(port)],
    }[kind]
    process = subprocess.Popen(["taskset", "-c", SERVER_CORE, *command], cwd=ROOT)
    try:
        harness.wait_answer(f"http://127.0.0.1:{port}/predict", BODY, process, 60)
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)


def _wrk(port: int) -> dict[str, float]:
    return harness.measured_wrk(f"http://127.0.0.1:{port}/predict", warmup_s=WARMUP_S, duration_s=DURATION_S,
                                connections=CONNECTIONS, script="post.lua", core=LOAD_CORE)


def _loadgen(port: int) -> dict[str, float]:
    """Our generator in its own process on LOAD_CORE (this script, with --client PORT)."""
    out = subprocess.run(["taskset", "-c", LOAD_CORE, sys.executable, __file__, "--client", str(port)],
                         check=True, capture_output=True, text=True, cwd=ROOT).stdout
    result: dict[str, float] = json.loads(out)
    return result


def client(port: int) -> None:
    """Run one measurement with the load generator and print its figures as JSON."""
    sys.path.insert(0, str(ROOT))
    from batchserve_planning.load.client import build_request
    from batchserve_planning.load.generator import run_load
    from batchserve_planning.load.results import summarize
    from batchserve_planning.load.shared import LoadSpec

    started = resource.getrusage(resource.RUSAGE_SELF)
    request = build_request("127.0.0.1", port, "/predict", BODY, "application/json")
    spec = LoadSpec("127.0.0.1", port, (request,), concurrency=CONNECTIONS, duration_s=DURATION_S,
                    warmup_s=WARMUP_S)
    run = run_load(spec, processes=PROCESSES)
    summary = summarize(run)
    cpu_s = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        base = started if who == resource.RUSAGE_SELF else None
        cpu_s += usage.ru_utime + usage.ru_stime - (base.ru_utime + base.ru_stime if base else 0.0)
    print(json.dumps({"rps": summary.throughput_rps, "p50_ms": summary.latency_ms["p50"],
                      "p99_ms": summary.latency_ms["p99"], "non_2xx": summary.error_rate,
                      "requests": len(run.records.end), "cpu_s": cpu_s,
                      "cpu_us_per_request": cpu_s / len(run.records.end) * 1e6}))


def main() -> None:
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    runs: dict[str, dict[str, list[dict[str, float]]]] = {s: {"wrk": [], "loadgen": []} for s in SERVERS}
    with tempfile.TemporaryDirectory() as directory:
        artifact = harness.demo_artifact("diabetes")
        config = Path(directory) / "models.toml"
        config.write_text(f'[repository]\nroot = "{artifact.parent}"\n\n[[models]]\nname = "diabetes"\n'
                          f'backend = "sklearn"\npath = "{artifact}"\n'
                          "max_batch_size = 64\nmax_queue = 4096\n")
        for _ in range(ROUNDS):
            for kind in SERVERS:
                port = PORT or harness.free_port()
                with _running(kind, config, port):
                    runs[kind]["wrk"].append(_wrk(port))
                    runs[kind]["loadgen"].append(_loadgen(port))
    report(runs)


def report(runs: dict[str, dict[str, list[dict[str, float]]]]) -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    print(f"\n{date}, commit {commit}, {machine}; servers on core {SERVER_CORE}, load on core {LOAD_CORE}, "
          f"{CONNECTIONS} connections, {ROUNDS} rounds of {DURATION_S:g} s after {WARMUP_S:g} s, "
          f"{PROCESSES} generator process(es)\n")
    print("| server | round | wrk RPS | generator RPS | generator / wrk | wrk p99 | generator p99 | "
          "generator CPU µs/request |")
    print("|---|---|---|---|---|---|---|---|")
    for kind in SERVERS:
        for index, (wrk, ours) in enumerate(zip(runs[kind]["wrk"], runs[kind]["loadgen"], strict=True)):
            print(f"| {kind} | {index + 1} | {wrk['rps']:,.0f} | {ours['rps']:,.0f} | "
                  f"{ours['rps'] / wrk['rps']:.2f} | {wrk['p99_ms']:.2f} | {ours['p99_ms']:.2f} | "
                  f"{ours['cpu_us_per_request']:.1f} |")
    peak = max(r["rps"] for r in runs["batchserve"]["wrk"])
    wire = max(r["rps"] for r in runs["wire"]["loadgen"])
    cpu_us = min(r["cpu_us_per_request"] for k in SERVERS for r in runs[k]["loadgen"])
    summary: dict[str, Any] = {
        "date": date, "commit": commit, "machine": machine, "runs": runs,
        "settings": {"server_core": SERVER_CORE, "load_core": LOAD_CORE, "connections": CONNECTIONS,
                     "duration_s": DURATION_S, "warmup_s": WARMUP_S, "rounds": ROUNDS,
                     "processes": PROCESSES},
        "batchserve_peak_rps": peak, "generator_on_wire_rps": wire,
        "generator_capacity_per_core_rps": 1e6 / cpu_us,
    }
    print(f"\nbatchserve's peak (wrk): {peak:,.0f} RPS. The generator drove the wire floor to "
          f"{wire:,.0f} RPS = {wire / peak:.2f}x that peak, from one core; its CPU cost, "
          f"{cpu_us:.1f} µs per request, is "
          f"{1e6 / cpu_us:,.0f} requests per second of one core = {1e6 / cpu_us / peak:.2f}x the peak.")
    print(f"wrote {harness.save_results('loadgen_capacity', summary)}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--client"]:
        client(int(sys.argv[2]))
    else:
        main()
