"""batchserve over gRPC against Triton over gRPC (nvidia-pytriton, as benchmarks/peers.py runs it),
on the diabetes model, in one run.

Both servers pinned to SERVER_CORE (Triton's every process), one at a time; the load is
batchserve's own generator (``loadtest --protocol grpc``: ModelInfer calls as tritonclient.grpc
sends them, one FP64 [1, 10] row in raw_input_contents, one gRPC channel per connection) in this
process on LOAD_CORE, closed loop at CONNECTIONS, WARMUP_S then DURATION_S; the servers alternate,
ROUNDS times. batchserve: max_batch_size 64, max_wait_ms 0; Triton: its dynamic batcher, 64 rows,
5 ms (benchmarks/peers/pytriton_app.py). PyTriton is installed by peers.py into its own venv
(``benchmarks/peers.py --setup-only triton``; needs pyenv's Python 3.12.1).

Usage: .venv/bin/python benchmarks/grpc_peers.py
Prints a markdown table and writes benchmarks/results/grpc-peers-<time>.json.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import harness
import peers

CONNECTIONS = int(os.environ.get("CONNECTIONS", "64"))
DURATION_S = float(os.environ.get("DURATION_S", "8"))
WARMUP_S = float(os.environ.get("WARMUP_S", "2"))
ROUNDS = int(os.environ.get("ROUNDS", "2"))
ROW = [0.038, 0.051, 0.062, 0.022, -0.044, -0.035, -0.043, -0.003, 0.020, -0.018]


def _load(port: int, input_name: str) -> dict[str, float]:
    from batchserve_planning.load.generator import run_load
    from batchserve_planning.load.grpc_client import build_grpc_requests
    from batchserve_planning.load.inputs import Sample
    from batchserve_planning.load.results import summarize
    from batchserve_planning.load.shared import LoadSpec

    metadata = {"inputs": [{"name": input_name, "datatype": "FP64", "shape": [-1, 10]}]}
    requests = build_grpc_requests([Sample(ROW)], metadata, model="diabetes", port=port).requests
    spec = LoadSpec("127.0.0.1", port, requests, concurrency=CONNECTIONS, duration_s=DURATION_S,
                    warmup_s=WARMUP_S, protocol="grpc")
    summary = summarize(run_load(spec, cpus=harness.cores(peers.LOAD_CORE)))
    errors = {s: n for s, n in summary.status_counts.items() if s != "200"}
    if errors:
        raise harness.UncleanRun(f"port {port}: {summary.status_counts}")
    return {"rps": summary.throughput_rps, "p50_ms": summary.latency_ms["p50"],
            "p99_ms": summary.latency_ms["p99"]}


def batchserve(config: Path) -> dict[str, float]:
    from batchserve_planning.serverproc import ManagedServer

    grpc_port = harness.free_port()
    server = ManagedServer(config, cpus=harness.cores(peers.SERVER_CORE), grace_s=10,
                           args=["--grpc-port", str(grpc_port)])
    try:
        server.wait_ready(timeout_s=180)
        return _load(grpc_port, "input")
    finally:
        server.stop(timeout_s=60)


def triton(artifact: Path) -> dict[str, float]:
    http_port, grpc_port, metrics_port = harness.free_port(), harness.free_port(), harness.free_port()
    command = [str(peers.VENVS / "triton" / "bin" / "python"), str(peers.APPS / "pytriton_app.py"),
               str(artifact), str(http_port), str(grpc_port), str(metrics_port)]
    spec = peers.PEERS["triton"]
    probe = (spec["path"], peers._body(spec["lua"]))
    process = peers._start(command, peers._env("triton"), http_port, probe)
    try:
        return _load(grpc_port, "features")
    finally:
        peers._stop(process)


def main() -> None:
    peers.setup("triton")
    artifact = harness.demo_artifact("diabetes")
    runs: dict[str, list[dict[str, float]]] = {"batchserve": [], "triton": []}
    with tempfile.TemporaryDirectory() as directory:
        config = Path(directory) / "models.toml"
        config.write_text(f'[repository]\nroot = "{artifact.parent}"\n\n[[models]]\nname = "diabetes"\n'
                          f'backend = "sklearn"\npath = "{artifact}"\nmax_batch_size = 64\nmax_wait_ms = 0\n'
                          "max_queue = 4096\n")
        for index in range(ROUNDS):
            order = ["batchserve", "triton"] if index % 2 == 0 else ["triton", "batchserve"]
            for name in order:
                runs[name].append(batchserve(config) if name == "batchserve" else triton(artifact))
                found = runs[name][-1]
                print(f"round {index + 1} {name}: {found['rps']:,.0f} rps, p99 {found['p99_ms']:.1f} ms",
                      flush=True)
    ratios = [b["rps"] / t["rps"] for b, t in zip(runs["batchserve"], runs["triton"], strict=True)]
    p99 = [t["p99_ms"] / b["p99_ms"] for b, t in zip(runs["batchserve"], runs["triton"], strict=True)]
    print(f"\n| over gRPC, {CONNECTIONS} connections | RPS (rounds) | p99 ms (rounds) |\n|---|---|---|")
    for name, measured in runs.items():
        rps = ", ".join(f"{r['rps']:,.0f}" for r in measured)
        tails = ", ".join(f"{r['p99_ms']:.1f}" for r in measured)
        print(f"| {name} | {rps} | {tails} |")
    print(f"\nbatchserve RPS / Triton's: median {statistics.median(ratios):.2f}x "
          f"({min(ratios):.2f}-{max(ratios):.2f}); Triton's p99 / batchserve's: median "
          f"{statistics.median(p99):.2f}x ({min(p99):.2f}-{max(p99):.2f})")
    results: dict[str, Any] = {
        "commit": harness.commit(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "connections": CONNECTIONS, "runs": runs, "rps_ratio": ratios, "p99_ratio": p99}
    print(f"wrote {harness.save_results('grpc-peers', results)}")


if __name__ == "__main__":
    main()
