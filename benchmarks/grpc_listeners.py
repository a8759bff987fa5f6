"""gRPC listeners per process (``BATCHSERVE_GRPC_LISTENERS``): one grpc.aio server against
several on the same port, in one run, diabetes one row per call.

Two ``batchserve serve --grpc-port`` servers with diabetes (``max_wait_ms = 0``), one with
``BASE`` listeners and one with ``LISTENERS``, both pinned to SERVER_CORE (the one not measured
idles); the load (batchserve's own generator, ``loadtest --protocol grpc``'s client, CONCURRENCY
connections, closed loop) on LOAD_CORE. ROUNDS rounds, each measuring on both servers gRPC's
ModelInfer and REST's v2 JSON (REST is the same on both: the control), the servers' order
alternating round to round: the server's CPU per request, throughput, p99 and the mean batch
(``grpc_bench._round``). Ratios are taken within a round.

Usage: .venv/bin/python benchmarks/grpc_listeners.py
Prints a markdown table and writes benchmarks/results/grpc-listeners-<time>.json.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc_bench
import harness

SERVER_CORE = os.environ.get("SERVER_CORE", "0")
ROUNDS = int(os.environ.get("ROUNDS", "4"))
REQUESTS = int(os.environ.get("REQUESTS", "3000"))
BASE = int(os.environ.get("BASE", "1"))
LISTENERS = int(os.environ.get("LISTENERS", "4"))
PROTOCOLS = ("grpc", "rest-v2")


def main() -> None:
    from batchserve_planning.serverproc import ManagedServer

    config_text = (f'[repository]\nroot = "/"\n\n[[models]]\nname = "diabetes"\nbackend = "sklearn"\n'
                   f'path = "{harness.demo_artifact("diabetes")}"\nmax_batch_size = 64\nmax_wait_ms = 0\n')
    rounds: list[dict[int, dict[str, dict[str, float]]]] = []
    with tempfile.TemporaryDirectory() as directory:
        config = Path(directory) / "models.toml"
        config.write_text(config_text)
        servers: dict[int, tuple[Any, int]] = {}
        try:
            for count in (BASE, LISTENERS):
                port = harness.free_port()
                server = ManagedServer(config, cpus=harness.cores(SERVER_CORE), grace_s=10,
                                       args=["--grpc-port", str(port)],
                                       env={"BATCHSERVE_GRPC_LISTENERS": str(count)})
                servers[count] = (server, port)
                server.wait_ready(timeout_s=300)
            for index in range(ROUNDS):
                order = (BASE, LISTENERS) if index % 2 == 0 else (LISTENERS, BASE)
                measured = {count: {p: grpc_bench._round(servers[count][0], servers[count][1], p,
                                                         "diabetes", REQUESTS) for p in PROTOCOLS}
                            for count in order}
                rounds.append(measured)
                print(f"round {index + 1}: " + "; ".join(
                    f"{count} listeners: " + ", ".join(
                        f"{p} {r['cpu_us_per_request']:.0f} us/req {r['rps']:.0f} rps "
                        f"p99 {r['p99_ms']:.1f} ms batch {r['mean_batch']:.1f}"
                        for p, r in measured[count].items())
                    for count in order), flush=True)
        finally:
            for server, _ in servers.values():
                server.stop(timeout_s=60)

    def spread(values: list[float]) -> str:
        return f"{statistics.median(values):.2f}x ({min(values):.2f}-{max(values):.2f})"

    print(f"\n| listeners | protocol | server CPU us/request (median) | ÷ {BASE} listener(s), per round: "
          "median (min-max) | RPS (median) | p99 ms (median) | mean batch |\n|---|---|---|---|---|---|---|")
    for count in (BASE, LISTENERS):
        for protocol in PROTOCOLS:
            picked = [r[count][protocol] for r in rounds]
            ratios = [r[count][protocol]["cpu_us_per_request"] / r[BASE][protocol]["cpu_us_per_request"]
                      for r in rounds]
            cpu_us = statistics.median(x["cpu_us_per_request"] for x in picked)
            print(f"| {count} | {protocol} | {cpu_us:.0f} | "
                  f"{spread(ratios) if count != BASE else '1'} | "
                  f"{statistics.median(x['rps'] for x in picked):,.0f} | "
                  f"{statistics.median(x['p99_ms'] for x in picked):.1f} | "
                  f"{statistics.median(x['mean_batch'] for x in picked):.1f} |")
    for count in (BASE, LISTENERS):
        versus = [r[count]["grpc"]["cpu_us_per_request"] / r[count]["rest-v2"]["cpu_us_per_request"]
                  for r in rounds]
        print(f"{count} listener(s): gRPC ÷ REST CPU per request, per round: {spread(versus)}")
    results = {"commit": harness.commit(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "settings": {"rounds": ROUNDS, "requests": REQUESTS, "concurrency": grpc_bench.CONCURRENCY,
                            "base": BASE, "listeners": LISTENERS},
               "rounds": [{str(k): v for k, v in r.items()} for r in rounds]}
    print(f"wrote {harness.save_results('grpc-listeners', results)}")


if __name__ == "__main__":
    main()
