"""batchserve's diabetes model against the HTTP floor, in one run.

The server under test is pinned to one core and wrk to the other; each POST
carries one 10-feature row. Two floors parse the same JSON and return a constant:
a bare FastAPI endpoint (benchmarks/floor_app.py, "floor") and a raw ASGI app with
no framework on the same uvicorn (benchmarks/raw_floor_app.py, "raw"), the most
any Python server on uvicorn can do. A third, "lean" (benchmarks/lean_floor_app.py),
runs the same model batched on granian's RSGI interface with no features: what a
batched server without uvicorn or ASGI does. Servers are measured in alternation,
ROUNDS times, so drift on a shared machine hits them all.

Usage: .venv/bin/python benchmarks/http_floor.py   (needs wrk: apt-get install wrk)
Prints a markdown table and writes benchmarks/results/http_floor-<time>.json. A run in which
either server answered anything but 2xx, or wrk counted a socket error, fails (exit 1) rather
than report a rate that includes them.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import harness
import psutil
from batchserve_planning.serverproc import ManagedServer

ROOT = Path(__file__).resolve().parent.parent
SERVER_CORE = os.environ.get("SERVER_CORE", "0")
LOAD_CORE = os.environ.get("LOAD_CORE", "1")
CONNECTIONS = [int(c) for c in os.environ.get("CONNECTIONS", "64,1").split(",")]
DURATION_S = int(os.environ.get("DURATION_S", "10"))
WARMUP_S = int(os.environ.get("WARMUP_S", "2"))
ROUNDS = int(os.environ.get("ROUNDS", "2"))
PORT = int(os.environ.get("PORT", "8091"))
MAX_BATCH_SIZE = int(os.environ.get("MAX_BATCH_SIZE", "64"))
MAX_WAIT_MS = float(os.environ.get("MAX_WAIT_MS", "0"))


def _models_toml(directory: Path) -> Path:
    artifact = harness.demo_artifact("diabetes")
    path = directory / "models.toml"
    path.write_text(
        f'[repository]\nroot = "{artifact.parent}"\n\n'
        f'[[models]]\nname = "diabetes"\nbackend = "sklearn"\npath = "{artifact}"\n'
        f"max_batch_size = {MAX_BATCH_SIZE}\nmax_wait_ms = {MAX_WAIT_MS}\nmax_queue = 4096\n")
    return path


KINDS = ("raw", "floor", "lean", "batchserve")
_FLOOR_APPS = {"floor": ("benchmarks.floor_app:app", "/docs"), "raw": ("benchmarks.raw_floor_app:app", "/")}
FLOORS = (("floor", "", "FastAPI"), ("raw", "_raw", "raw"), ("lean", "_lean", "lean"))


def _running(kind: str, config: Path) -> contextlib.AbstractContextManager[object]:
    if kind == "batchserve":
        return harness.serve(config, PORT, core=SERVER_CORE)
    if kind == "lean":  # granian's CLI: a main process and one worker process
        command = [sys.executable, "-m", "granian", "--interface", "rsgi", "--http", "1", "--port", str(PORT),
                   "--workers", "1", "--loop", "uvloop", "--no-ws", "--log-level", "warning",
                   "benchmarks.lean_floor_app:app"]
        return harness.process(command, f"http://127.0.0.1:{PORT}/", core=SERVER_CORE)
    target, probe = _FLOOR_APPS[kind]
    command = [sys.executable, "-m", "uvicorn", target, "--port", str(PORT),
               "--log-level", "warning", "--no-access-log", "--loop", "uvloop", "--http", "httptools"]
    return harness.process(command, f"http://127.0.0.1:{PORT}{probe}", core=SERVER_CORE)


def measure_server(kind: str, config: Path) -> dict[int, dict[str, float]]:
    url = f"http://127.0.0.1:{PORT}"
    results = {}
    with _running(kind, config) as server:
        pid = server.process.pid if isinstance(server, ManagedServer) else server.pid  # type: ignore[attr-defined]
        pids = [pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))]
        for connections in CONNECTIONS:
            result = harness.measured_wrk(
                f"{url}/predict", warmup_s=WARMUP_S, duration_s=DURATION_S, connections=connections,
                script="post.lua", model="diabetes" if kind == "batchserve" else None, core=LOAD_CORE,
                pids=pids)
            harness.check_clean(result, f"{kind}, {connections} connections")  # else RPS counts errors
            results[connections] = result
    return results


def main() -> None:
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    with tempfile.TemporaryDirectory() as directory:
        config = _models_toml(Path(directory))
        runs: dict[str, list[dict[int, dict[str, float]]]] = {kind: [] for kind in KINDS}
        try:
            for _ in range(ROUNDS):
                for kind in KINDS:
                    runs[kind].append(measure_server(kind, config))
        except harness.UncleanRun as exc:
            sys.exit(f"http_floor: {exc}")
    commit = harness.commit()
    summary: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": commit,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "settings": {"max_batch_size": MAX_BATCH_SIZE, "max_wait_ms": MAX_WAIT_MS,
                     "duration_s": DURATION_S, "rounds": ROUNDS},
        "runs": runs,
    }
    print(f"\n{summary['date']}, commit {commit}, {summary['machine']}; "
          f"server on core {SERVER_CORE}, wrk on core {LOAD_CORE}, {ROUNDS} rounds of {DURATION_S} s\n")
    print("| connections | server | RPS | p50 ms | p99 ms | mean batch | CPU µs / request | "
          "RPS / FastAPI floor | RPS / raw floor | RPS / lean floor |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for connections in CONNECTIONS:
        for round_index in range(ROUNDS):
            for kind in KINDS:
                result = runs[kind][round_index][connections]
                batch = f"{result['mean_batch']:.1f}" if "mean_batch" in result else "—"
                ratios = " | ".join(f"{result['rps'] / runs[floor_kind][round_index][connections]['rps']:.2f}"
                                    for floor_kind, _, _ in FLOORS)
                print(f"| {connections} | {kind} | {result['rps']:,.0f} | {result['p50_ms']:.2f} | "
                      f"{result['p99_ms']:.2f} | {batch} | {result['cpu_us_per_request']:.1f} | {ratios} |")
        for floor_kind, suffix, label in FLOORS:
            ratio = statistics.mean(
                runs["batchserve"][r][connections]["rps"] / runs[floor_kind][r][connections]["rps"]
                for r in range(ROUNDS))
            p50_gap = statistics.mean(
                runs["batchserve"][r][connections]["p50_ms"] - runs[floor_kind][r][connections]["p50_ms"]
                for r in range(ROUNDS))
            cost = statistics.mean(
                runs[floor_kind][r][connections]["cpu_us_per_request"]
                / runs["batchserve"][r][connections]["cpu_us_per_request"] for r in range(ROUNDS))
            print(f"{connections} connections: batchserve / {label} floor RPS = {ratio:.2f}, "
                  f"p50 gap = {p50_gap:+.2f} ms, {label} floor CPU / batchserve CPU per request "
                  f"= {cost:.2f}")
            summary[f"cpu_ratio{suffix}_{connections}"] = cost
            summary[f"ratio{suffix}_{connections}"] = ratio
            summary[f"p50_gap_ms{suffix}_{connections}"] = p50_gap
        print()
    print(f"wrote {harness.save_results('http_floor', summary)}")


if __name__ == "__main__":
    main()
