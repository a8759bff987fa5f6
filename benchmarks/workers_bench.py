"""Worker processes: one server process against several behind the same port, in one run.

The server may use every core of this machine and wrk (one thread) shares them, as a small
deployment would; each layout is measured in alternation, ROUNDS times, so drift hits them
all. For each run: requests/s, p50/p99, the server's CPU time per request (the supervisor and
every worker, user + system, over the measured seconds, divided by the requests answered),
how evenly the work spread over the workers (the busiest worker's CPU time over the
idlest's; 1.0 is even), wrk's own CPU time per request, and the machine's idle share (what
the server and wrk left of the cores: near 0, the cores cap the run, not the server) and steal
share (time the hypervisor gave other guests).

diabetes: one row per request, 64 keep-alive connections; layouts 1 worker and 2 workers
(each with its own listening socket on the port, SO_REUSEPORT: the one way workers share it since
the shared-socket mode was removed). The transformer (the
demo model, one text per request, texts of the lengths transformer_server.py uses): 1 worker
with 2 instances x 1 torch thread, 1 worker with 1 instance x 2 threads, 2 workers x 1 x 1.

Usage: .venv/bin/python benchmarks/workers_bench.py   (needs wrk; MODELS=diabetes,transformer)
Prints a markdown table and writes benchmarks/results/workers-<time>.json; a run with any
non-2xx answer or socket error fails (exit 1).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

import harness
import psutil
from batchserve_planning.serverproc import ManagedServer
from transformer_server import MAX_LENGTH, make_texts

MODELS = os.environ.get("MODELS", "diabetes,transformer").split(",")
CONNECTIONS = int(os.environ.get("CONNECTIONS", "64"))
DURATION_S = int(os.environ.get("DURATION_S", "10"))
WARMUP_S = int(os.environ.get("WARMUP_S", "3"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))


class Layout(NamedTuple):
    name: str
    workers: int
    instances: int
    threads: int


LAYOUTS = {
    "diabetes": [Layout("1 worker", 1, 1, 1),
                 Layout("2 workers", 2, 1, 1)],
    "transformer": [Layout("1 worker x 2 instances x 1 thread", 1, 2, 1),
                    Layout("1 worker x 1 instance x 2 threads", 1, 1, 2),
                    Layout("2 workers x 1 instance x 1 thread", 2, 1, 1)],
}


def models_toml(directory: Path, model: str, layout: Layout) -> Path:
    artifact = harness.demo_artifact(model)
    if model == "diabetes":
        table = (f'name = "diabetes"\nbackend = "sklearn"\npath = "{artifact}"\n'
                 "max_batch_size = 64\nmax_wait_ms = 0\nmax_queue = 4096\n")
    else:
        table = (f'name = "transformer"\nbackend = "transformer"\npath = "{artifact}"\n'
                 f"max_batch_size = 32\nmax_wait_ms = 2\nmax_queue = 4096\ntimeout_ms = 60000\n"
                 f"instances = {layout.instances}\noptions = {{ max_length = {MAX_LENGTH}, "
                 f"torch_threads = {layout.threads} }}\n")
    path = directory / f"{model}.toml"
    path.write_text(f'[repository]\nroot = "{artifact.parent}"\n\n[[models]]\n{table}')
    return path


def measure(model: str, layout: Layout, directory: Path, bodies: Path | None) -> dict[str, Any]:
    config = models_toml(directory, model, layout)
    server = ManagedServer(config, grace_s=10, args=["--workers", str(layout.workers)])
    try:
        server.wait_ready(timeout_s=180)
        script, env = ("post.lua", None) if model == "diabetes" else (
            "bodies.lua", {**os.environ, "BODIES": str(bodies)})
        supervisor = psutil.Process(server.process.pid)
        workers = [child.pid for child in supervisor.children()] if layout.workers > 1 else []
        result = harness.measured_wrk(f"{server.url}/predict", warmup_s=WARMUP_S, duration_s=DURATION_S,
                                      connections=CONNECTIONS, script=script, env=env,
                                      pids=[supervisor.pid, *workers])
        harness.check_clean(result, f"{model}, {layout.name}")
        per_worker = result["cpu_s"][1:] if workers else result["cpu_s"]
        result["spread"] = max(per_worker) / min(per_worker) if min(per_worker) > 0 else float("inf")
        return result
    finally:
        server.stop()


def transformer_bodies(directory: Path) -> Path:
    texts = make_texts(harness.demo_artifact("transformer"))
    path = directory / "texts.jsonl"
    path.write_text("".join(json.dumps({"model": "transformer", "inputs": [t]}) + "\n" for t in texts))
    return path


def main() -> None:
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    with tempfile.TemporaryDirectory() as folder:
        directory = Path(folder)
        bodies = transformer_bodies(directory) if "transformer" in MODELS else None
        try:
            for model in MODELS:
                runs[model] = {layout.name: [] for layout in LAYOUTS[model]}
                for _ in range(ROUNDS):
                    for layout in LAYOUTS[model]:
                        runs[model][layout.name].append(measure(model, layout, directory, bodies))
        except harness.UncleanRun as exc:
            sys.exit(f"workers_bench: {exc}")
    summary: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": harness.commit(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "settings": {"connections": CONNECTIONS, "duration_s": DURATION_S, "rounds": ROUNDS},
        "runs": runs,
    }
    print(f"\n{summary['date']}, commit {summary['commit']}, {summary['machine']}; wrk -t1 "
          f"-c{CONNECTIONS} sharing the cores, {ROUNDS} rounds of {DURATION_S} s\n")
    print("| model | layout | RPS (median) | p50 ms | p99 ms | CPU us / request | wrk CPU us / request "
          "| machine idle | steal | spread | RPS / first layout (per round) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for model, layouts in runs.items():
        base = next(iter(layouts.values()))
        for name, results in layouts.items():
            ratios = [r["rps"] / b["rps"] for r, b in zip(results, base, strict=True)]
            median = {key: statistics.median(r[key] for r in results)
                      for key in ("rps", "p50_ms", "p99_ms", "cpu_us_per_request",
                                  "wrk_cpu_us_per_request", "idle", "steal", "spread")}
            print(f"| {model} | {name} | {median['rps']:,.0f} | {median['p50_ms']:.2f} | "
                  f"{median['p99_ms']:.2f} | {median['cpu_us_per_request']:.0f} | "
                  f"{median['wrk_cpu_us_per_request']:.0f} | {median['idle']:.0%} | {median['steal']:.0%} | "
                  f"{median['spread']:.2f} | {', '.join(f'{r:.2f}' for r in ratios)} |")
            summary.setdefault("medians", {}).setdefault(model, {})[name] = {
                **median, "ratio_median": statistics.median(ratios)}
    print(f"\nwrote {harness.save_results('workers', summary)}")


if __name__ == "__main__":
    main()
