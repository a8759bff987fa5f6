"""all-MiniLM-L6-v2 served the way RAG clients call it: batchserve against its in-process limit
and against Infinity, one text per request from 64 connections, in one run.

Texts: benchmark_texts (benchmarks/embedding_texts.py): a deterministic mix, two thirds short
queries (5-20 tokens), one third passages (100-300 words, cut at the model's 256 tokens). Each
request is what the official ``openai`` client sends for one text to the OpenAI route,
``POST /v1/embeddings`` ``{"model", "input": [text], "encoding_format": "base64"}`` (its
default; ENCODING=float for floats): the route LangChain, LlamaIndex and the client call, on
both servers; wrk (-t1, benchmarks/bodies.lua) posts the texts' bodies in turn, WARMUP_S then
DURATION_S per measurement. A run with any non-2xx answer or socket error fails (exit 1).

Layouts (LAYOUTS, comma-separated; all by default), each measured ROUNDS times in alternation,
ratios taken within each round:

- ``limit``: sentence-transformers' own ``encode`` (it sorts by length) on the same folder, in
  its own process (benchmarks/embedding_limit.py), at the best batch size and thread layout
  (streams x torch threads) of a sweep made first over ST_BATCHES and both layouts (one stream
  with every core, one stream per core with one thread each);
- ``batchserve``: max_batch_size 32, max_wait_ms 0, max_batch_tokens 4096 (models/models.toml's
  minilm), the limit's thread layout as instances x torch_threads (SERVER_LAYOUT=IxT to choose);
- ``nobatch``: the same with batching off (max_batch_size 1);
- ``notokens``: the same with max_batch_tokens off;
- ``infinity``: Infinity 0.0.78 (benchmarks/infinity_peer.py: its venv, its defaults and why
  the disk cache is off) on the same folder and cores, at the best --batch-size of a sweep made
  first over INFINITY_BATCHES (32 is its default).

SERVER_CORES (taskset notation) pins the servers and the limit's process, LOAD_CORES pins wrk;
by default all share every core, as a small deployment would. Before each server is measured
its answer to the first text is checked (384 values of length 1), and the vectors batchserve
and Infinity give for it are compared (cosine).

Usage: .venv/bin/python benchmarks/embedding_bench.py [--setup-only]   (needs wrk)
  settings by environment: TEXTS (512), SEED, ROUNDS (3), DURATION_S (20), WARMUP_S (5),
  CONNECTIONS (64), LAYOUTS, ST_BATCHES (16,32,64), INFINITY_BATCHES (16,32,64), PASSES (2),
  SERVER_LAYOUT, SERVER_CORES, LOAD_CORES, ENCODING, INFINITY_TORCH and INFINITY_ARGS
  (infinity_peer.py)
Prints a markdown table and writes benchmarks/results/embedding-<time>.json.
"""

from __future__ import annotations

import base64
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import harness
import httpx
import infinity_peer
import numpy as np
from embedding_texts import benchmark_texts

ROOT = Path(__file__).resolve().parent.parent
TEXTS = int(os.environ.get("TEXTS", "512"))
SEED = int(os.environ.get("SEED", "0"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
DURATION_S = float(os.environ.get("DURATION_S", "20"))
WARMUP_S = float(os.environ.get("WARMUP_S", "5"))
CONNECTIONS = int(os.environ.get("CONNECTIONS", "64"))
ALL_LAYOUTS = ("limit", "batchserve", "nobatch", "notokens", "infinity")
LAYOUTS = [n for n in os.environ.get("LAYOUTS", ",".join(ALL_LAYOUTS)).split(",") if n]
ST_BATCHES = os.environ.get("ST_BATCHES", "16,32,64")
INFINITY_BATCHES = [int(n) for n in os.environ.get("INFINITY_BATCHES", "16,32,64").split(",")]
PASSES = int(os.environ.get("PASSES", "2"))
SERVER_LAYOUT = os.environ.get("SERVER_LAYOUT")
SERVER_CORES = os.environ.get("SERVER_CORES") or None
LOAD_CORES = os.environ.get("LOAD_CORES") or None
ENCODING = os.environ.get("ENCODING", "base64")
MODEL = "minilm"
LABELS = {"limit": "in-process limit (sentence-transformers encode)",
          "batchserve": "batchserve (batch 32, max_batch_tokens 4096)",
          "nobatch": "batchserve, batching off (max_batch_size 1)",
          "notokens": "batchserve, max_batch_tokens off",
          "infinity": "Infinity 0.0.78"}


def body(text: str) -> bytes:
    return json.dumps({"model": MODEL, "input": [text], "encoding_format": ENCODING}).encode()


def vector(url: str, text: str) -> np.ndarray:
    """The server's vector for ``text``, checked: 384 values of length 1."""
    answer = httpx.post(f"{url}/v1/embeddings", content=body(text),
                        headers={"Content-Type": "application/json"}, timeout=60)
    answer.raise_for_status()
    data = answer.json()["data"][0]["embedding"]
    values = (np.frombuffer(base64.b64decode(data), dtype="<f4") if isinstance(data, str)
              else np.asarray(data, dtype=np.float32))
    if values.shape != (384,) or abs(float(np.linalg.norm(values)) - 1) > 1e-3:
        raise RuntimeError(f"{url}: expected a unit vector of 384 values, got shape {values.shape}")
    return values


def limit(folder: Path, layouts: str, batches: str, passes: int) -> dict[str, Any]:
    """embedding_limit.py's figures, in its own process pinned like the servers."""
    prefix = ["taskset", "-c", SERVER_CORES] if SERVER_CORES else []
    out = subprocess.run([*prefix, sys.executable, str(ROOT / "benchmarks" / "embedding_limit.py"),
                          str(folder), "--texts", str(TEXTS), "--seed", str(SEED), "--layouts", layouts,
                          "--batches", batches, "--passes", str(passes)],
                         check=True, stdout=subprocess.PIPE, text=True).stdout
    found: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return found


def batchserve_toml(folder: Path, variant: str, instances: int, threads: int) -> str:
    options: dict[str, Any] = {"torch_threads": threads}
    if variant != "notokens":
        options["max_batch_tokens"] = 4096
    table = {"name": MODEL, "backend": "embedding", "path": str(folder), "device": "cpu",
             "max_batch_size": 1 if variant == "nobatch" else 32, "max_wait_ms": 0, "max_queue": 4096,
             "timeout_ms": 60000, "instances": instances, "options": options}
    from batchserve_planning.serverproc import toml_table

    return toml_table(table)


def load(url: str, bodies: Path, model: str | None, label: str) -> dict[str, float]:
    result = harness.measured_wrk(f"{url}/v1/embeddings", warmup_s=WARMUP_S, duration_s=DURATION_S,
                                  connections=CONNECTIONS, script="bodies.lua", model=model,
                                  core=LOAD_CORES, env={**os.environ, "BODIES": str(bodies)})
    harness.check_clean(result, label)
    if result["rps"] <= 0:  # wrk counts neither errors nor timeouts for requests still in flight
        raise harness.UncleanRun(f"{label}: no answer within the {DURATION_S:g} s measured: make "
                                 "DURATION_S and WARMUP_S longer than the server's latency")
    return result


class Bench:
    def __init__(self, folder: Path, texts: list[str], bodies: Path, logs: Path) -> None:
        self.folder, self.texts, self.bodies, self.logs = folder, texts, bodies, logs
        self.best_limit: dict[str, Any] | None = None
        self.server_layout = (1, len(harness.cores(SERVER_CORES) or os.sched_getaffinity(0)))
        self.infinity_batch = 32
        self.vectors: dict[str, np.ndarray] = {}

    def sweep_limit(self) -> dict[str, Any]:
        found = limit(self.folder, "auto", ST_BATCHES, PASSES)
        self.best_limit = max(found["rates"], key=lambda r: r["texts_per_s"])
        self.server_layout = (self.best_limit["streams"], self.best_limit["threads"])
        return found

    def sweep_infinity(self) -> dict[int, dict[str, float]]:
        rates = {size: self.infinity(size) for size in INFINITY_BATCHES}
        self.infinity_batch = max(rates, key=lambda size: rates[size]["rps"])
        return rates

    def measure(self, layout: str) -> dict[str, Any]:
        if layout == "limit":
            best = self.best_limit
            assert best is not None, "the limit's sweep runs first"
            found = limit(self.folder, f"{best['streams']}x{best['threads']}", str(best["batch"]), PASSES)
            rate = found["rates"][0]
            return {"rps": rate["texts_per_s"], "layout": f"{rate['streams']} x {rate['threads']}",
                    "batch": rate["batch"]}
        if layout == "infinity":
            return self.infinity(self.infinity_batch)
        instances, threads = self.server_layout
        with tempfile.TemporaryDirectory() as directory:
            config = Path(directory) / "models.toml"
            config.write_text(batchserve_toml(self.folder, layout, instances, threads))
            with harness.serve(config, core=SERVER_CORES) as server:
                self.check(server.url, "batchserve")
                result: dict[str, Any] = load(server.url, self.bodies, MODEL, LABELS[layout])
        result["layout"] = f"{instances} x {threads}"
        return result

    def infinity(self, batch: int) -> dict[str, Any]:
        with infinity_peer.serve(self.folder, batch, body(self.texts[0]), self.logs / "infinity.log",
                                 core=SERVER_CORES) as url:
            self.check(url, "infinity")
            result: dict[str, Any] = load(url, self.bodies, None, f"infinity, batch size {batch}")
        result["batch"] = batch
        return result

    def check(self, url: str, server: str) -> None:
        self.vectors[server] = vector(url, self.texts[0])


def main() -> None:
    unknown = sorted(set(LAYOUTS) - set(ALL_LAYOUTS))
    if unknown:
        sys.exit(f"LAYOUTS: unknown {unknown}; known: {','.join(ALL_LAYOUTS)}")
    failures: dict[str, str] = {}
    peer_versions: dict[str, str] = {}
    if "infinity" in LAYOUTS:
        try:
            infinity_peer.setup()
            peer_versions = infinity_peer.versions()
        except (RuntimeError, subprocess.CalledProcessError) as exc:
            failures["infinity"] = f"not installed: {exc}"
            print(f"infinity: {failures['infinity']}", file=sys.stderr)
    if "--setup-only" in sys.argv:
        sys.exit(1 if failures else 0)
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    folder = harness.demo_artifact("minilm").resolve()
    texts = benchmark_texts(TEXTS, SEED)
    layouts = [n for n in LAYOUTS if n not in failures]
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in layouts}
    sweeps: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as directory:
        bodies = Path(directory) / "bodies.jsonl"
        bodies.write_bytes(b"".join(body(text) + b"\n" for text in texts))
        logs = ROOT / "benchmarks" / "results" / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        bench = Bench(folder, texts, bodies, logs)
        try:
            if "limit" in layouts:
                sweeps["limit"] = bench.sweep_limit()
            if SERVER_LAYOUT:
                instances, threads = SERVER_LAYOUT.split("x")
                bench.server_layout = (int(instances), int(threads))
            if "infinity" in layouts:
                try:
                    sweeps["infinity"] = bench.sweep_infinity()
                except RuntimeError as exc:
                    failures["infinity"] = str(exc)[-3000:]
                    layouts.remove("infinity")
                    runs.pop("infinity")
                    print(f"infinity: failed: {failures['infinity']}", file=sys.stderr)
            for _ in range(ROUNDS):
                for layout in list(layouts):
                    try:
                        runs[layout].append(bench.measure(layout))
                    except RuntimeError as exc:
                        if layout != "infinity":
                            raise
                        failures["infinity"] = str(exc)[-3000:]  # the rounds so far stay reported
                        layouts.remove("infinity")
                        print(f"infinity: failed: {failures['infinity']}", file=sys.stderr)
        except harness.UncleanRun as exc:
            sys.exit(f"embedding_bench: {exc}")
    report(runs, sweeps, failures, peer_versions, bench)


def report(runs: dict[str, list[dict[str, Any]]], sweeps: dict[str, Any], failures: dict[str, str],
           peer_versions: dict[str, str], bench: Bench) -> None:
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
               f"servers on cores {SERVER_CORES or 'all'}, wrk -t1 on {LOAD_CORES or 'all'}")
    tokens = sweeps.get("limit", {}).get("tokens")
    print(f"\n{date}, commit {harness.commit()}, {machine}; {TEXTS} texts (seed {SEED}; tokens: "
          f"{json.dumps(tokens) if tokens else 'see embedding_limit.py'}), one per request, "
          f"{CONNECTIONS} connections, POST /v1/embeddings encoding_format {ENCODING}, "
          f"{ROUNDS} round(s) of {DURATION_S:g} s after {WARMUP_S:g} s\n")
    if "limit" in sweeps:
        print("| in-process sweep (streams x torch threads, batch) | texts/s |\n|---|---|")
        for rate in sweeps["limit"]["rates"]:
            print(f"| {rate['streams']} x {rate['threads']}, batch {rate['batch']} | "
                  f"{rate['texts_per_s']:.1f} |")
    if "infinity" in sweeps:
        print("\n| Infinity sweep (--batch-size) | texts/s | p50 ms | p99 ms |\n|---|---|---|---|")
        for size, result in sweeps["infinity"].items():
            print(f"| {size} | {result['rps']:.1f} | {result['p50_ms']:.0f} | {result['p99_ms']:.0f} |")
    print("\n| layout | setting | texts/s (median) | p50 ms | p99 ms | mean batch | padding | "
          "/ limit (per round) | / Infinity (per round) | Infinity p99 / this |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    summary: dict[str, Any] = {}

    def per_round(name: str, other: str, key: str = "rps") -> list[float]:
        return [a[key] / b[key] for a, b in zip(runs.get(name, []), runs.get(other, []), strict=False)
                if b.get(key)]

    for name, results in runs.items():
        median = {key: statistics.median(r[key] for r in results) if all(key in r for r in results) else None
                  for key in ("rps", "p50_ms", "p99_ms", "mean_batch", "padding")}
        vs_limit = per_round(name, "limit") if name != "limit" else []
        vs_peer = per_round(name, "infinity") if name != "infinity" else []
        p99 = ([peer["p99_ms"] / mine["p99_ms"] for mine, peer in zip(results, runs.get("infinity", []),
                                                                      strict=False)]
               if name not in ("limit", "infinity") else [])
        setting = results[0].get("layout") or f"--batch-size {results[0].get('batch')}"
        if name == "limit":
            setting = f"{setting}, batch {results[0]['batch']}"

        def cell(value: float | None, spec: str) -> str:
            return "—" if value is None else format(value, spec)

        def ratios(values: list[float]) -> str:
            return ", ".join(f"{v:.2f}" for v in values) or "—"

        print(f"| {LABELS[name]} | {setting} | {cell(median['rps'], '.1f')} | "
              f"{cell(median['p50_ms'], '.0f')} | {cell(median['p99_ms'], '.0f')} | "
              f"{cell(median['mean_batch'], '.1f')} | "
              f"{cell(median['padding'], '.2f')} | {ratios(vs_limit)} | {ratios(vs_peer)} | {ratios(p99)} |")
        summary[name] = {**median, "setting": setting, "vs_limit": vs_limit, "vs_infinity": vs_peer,
                         "infinity_p99_over_this": p99}
    if {"batchserve", "infinity"} <= set(bench.vectors):
        cosine = float(bench.vectors["batchserve"] @ bench.vectors["infinity"])
        print(f"\ncosine of batchserve's and Infinity's vectors for the first text: {cosine:.6f}")
        summary["cosine_batchserve_infinity"] = cosine
    targets = []
    if summary.get("batchserve", {}).get("vs_limit"):
        targets.append(f"batchserve / limit {statistics.median(summary['batchserve']['vs_limit']):.2f}x "
                       "(target >= 0.9x)")
    if summary.get("batchserve", {}).get("vs_infinity"):
        ratio = statistics.median(summary["batchserve"]["vs_infinity"])
        targets.append(f"batchserve / Infinity {ratio:.2f}x "
                       "(target >= 1.5x), Infinity's p99 / ours "
                       f"{statistics.median(summary['batchserve']['infinity_p99_over_this']):.2f}x "
                       "(target >= 1)")
    if targets:
        print("\n" + "; ".join(targets))
    for peer, reason in failures.items():
        print(f"\n{peer} not measured: {reason.strip().splitlines()[-1] if reason.strip() else ''}")
    path = harness.save_results("embedding", {
        "date": date, "commit": harness.commit(), "machine": machine,
        "settings": {"texts": TEXTS, "seed": SEED, "rounds": ROUNDS, "duration_s": DURATION_S,
                     "warmup_s": WARMUP_S, "connections": CONNECTIONS, "encoding": ENCODING,
                     "server_layout": list(bench.server_layout), "infinity_batch": bench.infinity_batch,
                     "infinity_torch": infinity_peer.TORCH, "infinity_args": infinity_peer.ARGS},
        "infinity_versions": peer_versions, "sweeps": sweeps, "runs": runs, "summary": summary,
        "failures": failures})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
