"""What tracing costs: batchserve with no tracing code at all (the commit before it), tracing off,
sampled at 1% and at 100%, alternating, in one run.

Two loads: diabetes, one row per request, 64 wrk connections (the per-request cost shows most on
a model that costs almost nothing), and resnet50, 16 wrk connections uploading JPEGs. The server
is pinned to SERVER_CORE, wrk to LOAD_CORE. With tracing on, spans go over OTLP/HTTP to a
receiver in this process that reads and discards them (so the export's cost is the server's).
CPU µs per request are the server process's, all threads, over the requests answered.

Usage: .venv/bin/python benchmarks/tracing_cost.py   (needs wrk; ~10 minutes)
BASELINE (a commit, default 6f471bc: before tracing) is checked out into a temporary git worktree.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import harness
import psutil
import sklearn.datasets
from batchserve_planning.serverproc import ManagedServer

ROOT = Path(__file__).resolve().parent.parent
SERVER_CORE = os.environ.get("SERVER_CORE", "0")
LOAD_CORE = os.environ.get("LOAD_CORE", "1")
ROUNDS = int(os.environ.get("ROUNDS", "3"))
DURATION_S = float(os.environ.get("DURATION_S", "8"))
WARMUP_S = float(os.environ.get("WARMUP_S", "2"))
BASELINE = os.environ.get("BASELINE", "6f471bc")
LOADS = os.environ.get("LOADS", "diabetes,resnet50").split(",")
MODES = ("none", "off", "1%", "100%")
PHOTOS = [Path(os.path.dirname(sklearn.datasets.__file__)) / "images" / name
          for name in ("china.jpg", "flower.jpg")]  # scikit-learn's two sample photos


class Sink:
    """An OTLP/HTTP endpoint that reads every export and answers 200, counting the bytes."""

    def __init__(self) -> None:
        sink = self
        self.bytes = 0

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                sink.bytes += len(self.rfile.read(int(self.headers["Content-Length"])))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


def _env(mode: str, sink: Sink, baseline: Path) -> tuple[dict[str, str], list[str]]:
    if mode == "none":
        return {"PYTHONPATH": str(baseline / "server")}, []
    if mode == "off":
        return {}, []
    ratio = "0.01" if mode == "1%" else "1.0"
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint, "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": ratio}, ["--tracing"]  # the export queue's defaults


def _config(directory: Path, load: str) -> Path:
    artifact = harness.demo_artifact(load)
    path = directory / f"{load}.toml"
    if load == "diabetes":
        table = 'backend = "sklearn"\nmax_batch_size = 64\nmax_queue = 4096\n'
    else:
        table = 'backend = "resnet50"\nmax_batch_size = 8\nmax_queue = 1024\ntimeout_ms = 60000\n'
    path.write_text(f'[repository]\nroot = "{artifact.parent}"\n\n[[models]]\nname = "{load}"\n'
                    f'path = "{artifact}"\n{table}')
    return path


def measure(load: str, mode: str, config: Path, sink: Sink, baseline: Path) -> dict[str, Any]:
    env, args = _env(mode, sink, baseline)
    server = ManagedServer(config, cpus=harness.cores(SERVER_CORE), env=env, args=args)
    try:
        server.wait_ready(timeout_s=180.0)
        pids = [server.process.pid, *(c.pid for c in psutil.Process(server.process.pid).children(True))]
        if load == "diabetes":
            result = harness.measured_wrk(f"{server.url}/predict", warmup_s=WARMUP_S, duration_s=DURATION_S,
                                          connections=64, script="post.lua", core=LOAD_CORE, pids=pids)
        else:
            wrk_env = {**os.environ, "IMAGES": ":".join(str(p) for p in PHOTOS)}
            result = harness.measured_wrk(f"{server.url}/predict/resnet50", warmup_s=WARMUP_S,
                                          duration_s=DURATION_S, connections=16, script="upload.lua",
                                          core=LOAD_CORE, env=wrk_env, pids=pids)
        harness.check_clean(result, f"{load}, {mode}")
        return result
    finally:
        server.stop(timeout_s=60.0)


@contextlib.contextmanager
def worktree(ref: str) -> Iterator[Path]:
    """``ref`` checked out in a temporary git worktree, removed afterwards."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", str(path), ref], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            yield path
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT, check=False,
                           capture_output=True)


def main() -> int:
    sink = Sink()
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {load: {m: [] for m in MODES} for load in LOADS}
    with worktree(BASELINE) as baseline, tempfile.TemporaryDirectory() as directory:
        configs = {load: _config(Path(directory), load) for load in LOADS}
        try:
            for _ in range(ROUNDS):
                for load in LOADS:
                    for mode in MODES:
                        runs[load][mode].append(measure(load, mode, configs[load], sink, baseline))
        except harness.UncleanRun as exc:
            sys.exit(f"tracing_cost: {exc}")
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"\n{date}, commit {harness.commit()} (baseline {BASELINE}), {os.cpu_count()} cores; server on "
          f"core {SERVER_CORE}, wrk on core {LOAD_CORE}; {ROUNDS} rounds of {DURATION_S:g} s, alternating\n")
    print("| load | mode | RPS per round | RPS / no tracing code (each round) | p99 ms | CPU µs / request |")
    print("|---|---|---|---|---|---|")
    summary: dict[str, Any] = {"date": date, "commit": harness.commit(), "baseline": BASELINE, "runs": runs}
    for load in LOADS:
        base = [r["rps"] for r in runs[load]["none"]]
        for mode in MODES:
            rps = [r["rps"] for r in runs[load][mode]]
            ratios = [value / b for value, b in zip(rps, base, strict=True)]
            cpu = statistics.median(r["cpu_us_per_request"] for r in runs[load][mode])
            print(f"| {load} | {mode} | {', '.join(f'{v:,.0f}' for v in rps)} | "
                  f"{', '.join(f'{v:.2f}' for v in ratios)} (median {statistics.median(ratios):.2f}) | "
                  f"{statistics.median(r['p99_ms'] for r in runs[load][mode]):.2f} | {cpu:.1f} |")
            summary[f"{load}_{mode}_ratio"] = statistics.median(ratios)
            summary[f"{load}_{mode}_cpu_us"] = cpu
        spans = 8  # a traced request: its span, six stages, and its share of a batch span (at most 1)
        added = summary[f"{load}_100%_cpu_us"] - summary[f"{load}_off_cpu_us"]
        print(f"\n{load}: tracing every request adds {added:.1f} µs of server CPU per request, "
              f"~{added / spans:.1f} µs per span (at most {spans} spans a request)\n")
    print(f"OTLP bytes received: {sink.bytes:,}")
    harness.save_results("tracing_cost", summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
