"""Does a figure move with the server or with the time? Servers of one configuration measured in turn.

``recommend``'s final round and its re-run compare figures of the same configuration measured on
different servers. Measured one after the other, a difference between them may be the servers'
(how a fresh start turned out) or the machine's (its speed over the minutes between them). This
starts SERVERS servers of all-MiniLM-L6-v2 at once (2 workers, batch 8, wait 2 ms, one torch
thread each: the configuration whose re-run came in 0.72x its final round on an idle machine) and
measures them in turn, ROUNDS rounds, the order reversed every round, each a step as recommend's
final round measures one (``ramp.measure_step``, three ramp steps long, 8 clients). Where the
figures move together round by round, the time moves them; where one server stays apart, the server.

STAGGER=N starts server 0 first and measures it alone N rounds before the others start: where
server 0 then stays below a fresh one, a server's age (minutes of serving beside the load) moves
its figure, as a ``recommend`` re-run (a fresh start against the pick's final-round server)
would see. MODEL=diabetes measures the diabetes pick beside the hog (batch 64, wait 0 ms, WORKERS,
64 clients by default).

MODEL=resnet50 measures ResNet50 instead (batch 1, wait 0 ms, one worker: the pick of resnet50's
runs beside the CPU hog whose re-runs were "not known"), on scikit-learn's two photos; LOAD=1 runs
one process spinning per core beside it (``harness.background_load``). Per pair of servers it
also prints the spread of the per-round ratio (server a over server b, measured next to each
other) beside each server's own run-to-run spread: where the ratio spreads much less, the noise
is the machine's and falls on both; where as much, each run's own.

Usage: .venv/bin/python benchmarks/speed_drift.py   SERVERS=3  ROUNDS=6  CLIENTS=8  WORKERS=2
  MODEL=minilm (or resnet50, diabetes)  STAGGER=0  LOAD=0 (1: a CPU hog beside it)
  THREADS: torch_threads (own: the server's choice, its cores; default: minilm 1, resnet50 own)
Prints each round and, per server, mean, min and max; per round, the highest over the lowest
server. Writes benchmarks/results/speed-drift-<time>.json.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from pathlib import Path

import harness
import sklearn.datasets
from batchserve_planning.load.inputs import Requests, build_requests, load_samples
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
options = {{ max_batch_tokens = 4096{threads} }}
"""
RESNET50 = """[repository]
root = "{root}"

[[models]]
name = "resnet50"
backend = "resnet50"
path = "{root}/artifacts/resnet50.safetensors"
device = "cpu"
max_batch_size = 1
max_wait_ms = 0.0
max_queue = 256
timeout_ms = 30000
instances = 1
options = {{ weights = "file", top_k = 5{threads} }}
"""


def main() -> None:
    count, rounds = int(os.environ.get("SERVERS", "3")), int(os.environ.get("ROUNDS", "6"))
    clients, workers = int(os.environ.get("CLIENTS", "8")), os.environ.get("WORKERS", "2")
    model, loaded = os.environ.get("MODEL", "minilm"), os.environ.get("LOAD", "0") == "1"
    stagger = int(os.environ.get("STAGGER", "0"))
    threads = os.environ.get("THREADS", "1" if model == "minilm" else "own")
    if model == "diabetes":
        work, config = harness.workspace("speed-drift", 64)
        samples = load_samples(harness.diabetes_rows(work / "rows.jsonl"), "rows")
        settings = RampSettings(slo_ms=20.0)
    else:
        work = ROOT / "benchmarks" / "results" / f"speed-drift-{time.strftime('%Y%m%d-%H%M%S')}"
        work.mkdir(parents=True)
        config = work / "models.toml"
        config.write_text({"minilm": MODEL, "resnet50": RESNET50}[model].format(
            root=ROOT / "models", threads="" if threads == "own" else f", torch_threads = {int(threads)}"))
        if model == "minilm":
            (work / "texts.txt").write_text("".join(text + "\n" for text in benchmark_texts(200)))
            samples, settings = load_samples(work / "texts.txt", "text"), RampSettings(slo_ms=200.0)
        else:
            photos = Path(sklearn.datasets.__file__).parent / "images"
            samples, settings = load_samples(photos, "image"), RampSettings(slo_ms=2000.0)
    commit, started = harness.commit(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    servers: list[ManagedServer] = []
    figures: list[list[float]] = [[] for _ in range(count)]
    alone: list[float] = []

    def step(server: ManagedServer, requests: Requests) -> float:
        measured = measure_step(server.url, model, requests, clients, settings, None, "step",
                                duration_s=3 * settings.step_s, min_responses=3 * settings.min_responses)
        return measured.rows_per_s

    def requests_for(server: ManagedServer) -> Requests:
        host, _, port = server.url.removeprefix("http://").partition(":")
        return build_requests(samples, host=host, port=int(port), model=model)

    def start(how_many: int) -> None:
        fresh = [ManagedServer(config, args=["--workers", workers]) for _ in range(how_many)]
        servers.extend(fresh)
        for server in fresh:
            server.wait_ready()

    with harness.background_load(loaded):
        try:
            if stagger:  # server 0 serves alone first, and ages
                start(1)
                first = requests_for(servers[0])
                for round_ in range(stagger):
                    alone.append(step(servers[0], first))
                    print(f"alone {round_ + 1}: server 0: {alone[-1]:.2f}/s", flush=True)
            start(count - len(servers))
            requests = [requests_for(server) for server in servers]
            for index in range(rounds):
                order = range(count) if index % 2 == 0 else reversed(range(count))
                line = []
                for n in order:
                    figures[n].append(step(servers[n], requests[n]))
                    line.append(f"server {n}: {figures[n][-1]:.2f}/s")
                print(f"round {index + 1}: " + ", ".join(line), flush=True)
        finally:
            for server in servers:
                server.stop()
    apart = [max(f[r] for f in figures) / min(f[r] for f in figures) for r in range(rounds)]
    print(f"\ncommit {commit}, started {started}, {model}, {count} servers, {workers} workers, "
          f"torch threads {threads}, server 0 alone first for {stagger} rounds, "
          f"{clients} clients, {'beside a CPU hog' if loaded else 'no other load'}\n")
    for n, mine in enumerate(figures):
        print(f"server {n}: mean {statistics.mean(mine):.2f}, {min(mine):.2f}-{max(mine):.2f}/s, "
              f"run-to-run spread {cv(mine):.1%} "
              f"(highest / lowest over the rounds {max(mine) / min(mine):.2f})")
    print("per round, the highest server over the lowest: " + ", ".join(f"{a:.2f}" for a in apart))
    pairs = paired(figures)
    for a, b, ratio, spread in pairs:
        print(f"server {a} over server {b}: mean of the per-round ratios {ratio:.3f}, "
              f"their spread {spread:.1%}")
    harness.save_results("speed-drift", {"commit": commit, "started": started, "model": model,
                                         "loaded": loaded, "threads": threads, "clients": clients,
                                         "workers": workers, "figures": figures, "apart": apart,
                                         "stagger": stagger, "alone": alone,
                                         "pairs": pairs})


def cv(values: list[float]) -> float:
    """Standard deviation over mean."""
    return statistics.stdev(values) / statistics.mean(values) if len(values) > 1 else 0.0


def paired(figures: list[list[float]]) -> list[tuple[int, int, float, float]]:
    """Per pair of servers: the geometric mean of the per-round ratios and their spread (the
    standard deviation of their logarithms, about the ratio's relative spread)."""
    found = []
    for a in range(len(figures)):
        for b in range(a + 1, len(figures)):
            logs = [math.log(x / y) for x, y in zip(figures[a], figures[b], strict=True)]
            spread = statistics.stdev(logs) if len(logs) > 1 else 0.0
            found.append((a, b, math.exp(statistics.mean(logs)), spread))
    return found


if __name__ == "__main__":
    main()
