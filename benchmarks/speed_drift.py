"""Does a figure move with the server or with the time? Servers of one configuration measured in turn.

``recommend``'s final round and its re-run compare figures of the same configuration measured on
different servers. Measured one after the other, a difference between them may be the servers'
(how a fresh start turned out) or the machine's (its speed over the minutes between them). This
starts SERVERS servers of all-MiniLM-L6-v2 at once (2 workers, batch 8, wait 2 ms, one torch
thread each: the configuration whose re-run came in 0.72x its final round on an idle machine) and
measures them in turn, ROUNDS rounds, the order reversed every round, each a step as recommend's
final round measures one (``ramp.measure_step``, three ramp steps long, 8 clients). Where the
figures move together round by round, the time moves them; where one server stays apart, the server.

Usage: .venv/bin/python benchmarks/speed_drift.py   SERVERS=3  ROUNDS=6  CLIENTS=8  WORKERS=2
Prints each round and, per server, mean, min and max; per round, the highest over the lowest
server. Writes benchmarks/results/speed-drift-<time>.json.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import harness
from batchserve_planning.load.inputs import build_requests, load_samples
from batchserve_planning.ramp import RampSettings, measure_step
from batchserve_planning.serverproc import ManagedServer
from embedding_texts import benchmark_texts

ROOT = Path(__file__).resolve().parents[1]
MODEL = """[repository]
root = "{root}"

[[models]]
name = "minilm"
backend = "embedding"
path = "{root}/artifacts/minilm"
device = "cpu"
max_batch_size = 8
max_wait_ms = 2.0
max_queue = 1024
timeout_ms = 30000
instances = 1
options = {{ max_batch_tokens = 4096, torch_threads = 1 }}
"""


def main() -> None:
    count, rounds = int(os.environ.get("SERVERS", "3")), int(os.environ.get("ROUNDS", "6"))
    clients, workers = int(os.environ.get("CLIENTS", "8")), os.environ.get("WORKERS", "2")
    work = ROOT / "benchmarks" / "results" / f"speed-drift-{time.strftime('%Y%m%d-%H%M%S')}"
    work.mkdir(parents=True)
    (work / "models.toml").write_text(MODEL.format(root=ROOT / "models"))
    (work / "texts.txt").write_text("".join(text + "\n" for text in benchmark_texts(200)))
    samples = load_samples(work / "texts.txt", "text")
    settings = RampSettings(slo_ms=200.0)
    commit, started = harness.commit(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    servers: list[ManagedServer] = []
    figures: list[list[float]] = [[] for _ in range(count)]
    try:
        for _ in range(count):
            servers.append(ManagedServer(work / "models.toml", args=["--workers", workers]))
        for server in servers:
            server.wait_ready()
        requests = []
        for server in servers:
            host, _, port = server.url.removeprefix("http://").partition(":")
            requests.append(build_requests(samples, host=host, port=int(port), model="minilm"))
        for index in range(rounds):
            order = range(count) if index % 2 == 0 else reversed(range(count))
            line = []
            for n in order:
                step = measure_step(servers[n].url, "minilm", requests[n], clients, settings, None, "step",
                                    duration_s=3 * settings.step_s, min_responses=3 * settings.min_responses)
                figures[n].append(step.rows_per_s)
                line.append(f"server {n}: {step.rows_per_s:.1f}/s")
            print(f"round {index + 1}: " + ", ".join(line), flush=True)
    finally:
        for server in servers:
            server.stop()
    apart = [max(f[r] for f in figures) / min(f[r] for f in figures) for r in range(rounds)]
    print(f"\ncommit {commit}, started {started}, {count} servers, {workers} workers, {clients} clients\n")
    for n, mine in enumerate(figures):
        print(f"server {n}: mean {statistics.mean(mine):.1f}, {min(mine):.1f}-{max(mine):.1f}/s "
              f"(highest / lowest over the rounds {max(mine) / min(mine):.2f})")
    print("per round, the highest server over the lowest: " + ", ".join(f"{a:.2f}" for a in apart))
    harness.save_results("speed-drift", {"commit": commit, "started": started, "clients": clients,
                                         "workers": workers, "figures": figures, "apart": apart})


if __name__ == "__main__":
    main()
