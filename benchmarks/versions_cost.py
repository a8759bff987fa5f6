"""What versions cost the primary: a model without versions (the baseline), two versions routed
50/50 (the cost of routing), and the primary with a shadow at 0% (loaded, no copies), 10% and
100% of the traffic; alternating, in one run, on diabetes and minilm.

diabetes: one row per request, 64 wrk connections on POST /predict; minilm: one text per
request (benchmarks/embedding_texts.py), 16 connections. The server is pinned to SERVER_CORE and
wrk to LOAD_CORE: a shadow's copies run on the server's core too, so what they cost the primary
shows as RPS lost. The shadow is the same artifact (its agreement is exact); its copies past its
queue (max_queue rows) are dropped, and the share dropped is reported from /metrics.

Usage: .venv/bin/python benchmarks/versions_cost.py   (needs wrk; ~8 minutes)
Settings by environment: ROUNDS (3), DURATION_S (6), WARMUP_S (2), LOADS (diabetes,minilm).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import harness
import httpx
import psutil
from batchserve_planning.serverproc import ManagedServer
from embedding_texts import benchmark_texts
from prometheus_client.parser import text_string_to_metric_families

SERVER_CORE = os.environ.get("SERVER_CORE", "0")
LOAD_CORE = os.environ.get("LOAD_CORE", "1")
ROUNDS = int(os.environ.get("ROUNDS", "3"))
DURATION_S = float(os.environ.get("DURATION_S", "6"))
WARMUP_S = float(os.environ.get("WARMUP_S", "2"))
LOADS = os.environ.get("LOADS", "diabetes,minilm").split(",")
MODES = ("one", "two", "shadow0", "shadow10", "shadow100")
CONNECTIONS = {"diabetes": 64, "minilm": 16}
TABLES = {
    "diabetes": 'backend = "sklearn"\nmax_batch_size = 64\nmax_queue = 4096\n',
    "minilm": 'backend = "embedding"\nmax_batch_size = 32\nmax_queue = 1024\ntimeout_ms = 60000\n'
              'options = { max_batch_tokens = 4096 }\n',
}
VERSIONS = {  # each mode's versions (none: a model without versions)
    "one": None,
    "two": '{ version = "1", weight = 0.5 }, { version = "2", weight = 0.5 }',
    "shadow0": '{ version = "1", weight = 1.0 }, { version = "2", weight = 0.0 }',
    "shadow10": '{ version = "1", weight = 1.0 }, { version = "2", shadow = 0.1 }',
    "shadow100": '{ version = "1", weight = 1.0 }, { version = "2", shadow = 1.0 }',
}


def config(directory: Path, load: str, mode: str) -> Path:
    artifact = harness.demo_artifact(load)
    versions = VERSIONS[mode]
    table = TABLES[load] + (f"versions = [{versions}]\n" if versions else "")
    path = directory / f"{load}-{mode}.toml"
    path.write_text(f'[repository]\nroot = "{artifact.parent}"\n\n[[models]]\nname = "{load}"\n'
                    f'path = "{artifact}"\n{table}')
    return path


def bodies(directory: Path) -> Path:
    path = directory / "minilm-bodies.jsonl"
    path.write_text("".join(json.dumps({"model": "minilm", "inputs": [text]}) + "\n"
                            for text in benchmark_texts(256, 0)))
    return path


def copies(url: str) -> dict[str, float]:
    """The shadow copies so far, by outcome."""
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.name == "batchserve_shadow_copies_total":
                counts[sample.labels["outcome"]] = counts.get(sample.labels["outcome"], 0.0) + sample.value
    return counts


def measure(load: str, mode: str, path: Path, texts: Path) -> dict[str, Any]:
    server = ManagedServer(path, cpus=harness.cores(SERVER_CORE))
    try:
        server.wait_ready(timeout_s=180.0)
        pids = [server.process.pid, *(c.pid for c in psutil.Process(server.process.pid).children(True))]
        script, env = ("post.lua", None) if load == "diabetes" else (
            "bodies.lua", {**os.environ, "BODIES": str(texts)})
        before = copies(server.url)
        result = harness.measured_wrk(f"{server.url}/predict", warmup_s=WARMUP_S, duration_s=DURATION_S,
                                      connections=CONNECTIONS[load], script=script, core=LOAD_CORE,
                                      env=env, pids=pids)
        harness.check_clean(result, f"{load}, {mode}")
        after = copies(server.url)
        made = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in ("compared", "dropped", "failed")}
        total = sum(made.values())
        result["copies"] = made
        result["dropped_share"] = made["dropped"] / total if total else 0.0
        return result
    finally:
        server.stop(timeout_s=60.0)


def main() -> int:
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {load: {m: [] for m in MODES} for load in LOADS}
    with tempfile.TemporaryDirectory() as folder:
        directory = Path(folder)
        texts = bodies(directory)
        configs = {(load, mode): config(directory, load, mode) for load in LOADS for mode in MODES}
        try:
            for _ in range(ROUNDS):
                for load in LOADS:
                    for mode in MODES:
                        runs[load][mode].append(measure(load, mode, configs[load, mode], texts))
        except harness.UncleanRun as exc:
            sys.exit(f"versions_cost: {exc}")
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"\n{date}, commit {harness.commit()}, {os.cpu_count()} cores; server on core {SERVER_CORE}, "
          f"wrk on core {LOAD_CORE}; {ROUNDS} rounds of {DURATION_S:g} s, alternating\n")
    print("| load | mode | RPS per round | RPS / one version (each round) | p99 ms (median) | "
          "CPU µs / request | copies dropped |")
    print("|---|---|---|---|---|---|---|")
    summary: dict[str, Any] = {"date": date, "commit": harness.commit(), "runs": runs}
    for load in LOADS:
        base = [r["rps"] for r in runs[load]["one"]]
        for mode in MODES:
            rps = [r["rps"] for r in runs[load][mode]]
            ratios = [value / b if b else float("nan") for value, b in zip(rps, base, strict=True)]
            p99 = statistics.median(r["p99_ms"] for r in runs[load][mode])
            cpu = statistics.median(r["cpu_us_per_request"] for r in runs[load][mode])
            dropped = statistics.median(r["dropped_share"] for r in runs[load][mode])
            print(f"| {load} | {mode} | {', '.join(f'{v:,.0f}' for v in rps)} | "
                  f"{', '.join(f'{v:.2f}' for v in ratios)} (median {statistics.median(ratios):.2f}) | "
                  f"{p99:.2f} | {cpu:.1f} | {dropped:.0%} |")
            summary[f"{load}_{mode}_ratio"] = statistics.median(ratios)
    harness.save_results("versions_cost", summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
