"""The demo transformer classifier on ONNX Runtime through batchserve vs ONNX Runtime in-process.

The classifier is exported with ``batchserve export`` (float32) and served by the
onnx-classifier backend. The in-process limit runs that backend's ``predict_batch`` (tokenising,
grouping, the session) on the texts of benchmarks/transformer_server.py (exact token lengths,
a third of them long) sorted by length, in batches of 32, as one stream of every core's
threads and as one single-thread stream per core (streams in threads, as the server's
``instances``); the better is the limit, measured before and after the server and averaged.
The server, in the limit's layout, gets one text per request from CONNECTIONS wrk connections
(``max_batch_size`` 32, length grouping on). The ratio is the server's rate over the limit.

Usage: .venv/bin/python benchmarks/onnx_server.py   (needs wrk; ~2 minutes; ROUNDS=2 pairs)
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import harness
from batchserve.backends.onnx_text import OnnxClassifierBackend
from batchserve.config import ModelConfig
from batchserve.onnx_export import export
from transformer_server import CONNECTIONS, CORES, DURATION_S, MAX_LENGTH, WARMUP_S, Layout, make_texts

BATCH = 32
ROUNDS = int(os.environ.get("ROUNDS", "2"))
PORT = int(os.environ.get("PORT", "8094"))


def in_process(folder: Path, texts: list[str]) -> dict[Layout, float]:
    results = {}
    for streams, threads in sorted({(1, CORES), (CORES, 1)}):
        config = ModelConfig(name="t", backend="onnx-classifier", path=folder, max_batch_size=BATCH,
                             options={"max_length": MAX_LENGTH, "intra_op_threads": threads})
        model = OnnxClassifierBackend(config)
        model.load("cpu")
        lengths = [len(ids) for ids in model.tokenize(texts)]
        ordered = [text for _, text in sorted(zip(lengths, texts, strict=True))]
        batches = [ordered[start:start + BATCH] for start in range(0, len(ordered), BATCH)]
        with ThreadPoolExecutor(streams) as pool:
            list(pool.map(model.predict_batch, batches[:streams]))  # burn-in
            started = time.perf_counter()
            list(pool.map(model.predict_batch, batches))
            results[Layout(streams, threads, BATCH)] = len(ordered) / (time.perf_counter() - started)
    return results


def serve(folder: Path, bodies: Path, layout: Layout) -> dict[str, float]:
    config = (f'[[models]]\nname = "text"\nbackend = "onnx-classifier"\npath = "{folder}"\n'
              f"max_batch_size = {BATCH}\ninstances = {layout.streams}\nmax_queue = 4096\n"
              f"timeout_ms = 60000\noptions = {{ max_length = {MAX_LENGTH}, "
              f"intra_op_threads = {layout.threads} }}\n")
    env = {**os.environ, "BODIES": str(bodies)}
    with harness.batchserve(config, PORT) as (url, _):
        result: dict[str, float] = harness.measured_wrk(
            f"{url}/predict", warmup_s=WARMUP_S, duration_s=DURATION_S, connections=CONNECTIONS,
            script="bodies.lua", model="text", env=env)
    harness.check_clean(result, "onnx server")
    return result


def main() -> None:
    source = harness.demo_artifact("transformer")
    texts = make_texts(source)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "sentiment"
        export(ModelConfig(name="sentiment", backend="transformer", path=source,
                           options={"max_length": MAX_LENGTH}), folder)
        bodies = Path(scratch) / "bodies.jsonl"
        bodies.write_text("".join(json.dumps({"model": "text", "inputs": [t]}) + "\n" for t in texts))
        ratios, lines = [], []
        for _ in range(ROUNDS):
            before = in_process(folder, texts)
            layout = max(before, key=before.__getitem__)
            served = serve(folder, bodies, layout)
            after = in_process(folder, texts)
            limit = (before[layout] + after[layout]) / 2
            ratios.append(served["rps"] / limit)
            lines.append(f"| {layout} | {limit:.1f} | {served['rps']:.1f} | {served['p50_ms']:.0f} ms | "
                         f"{served['p99_ms']:.0f} ms | {served['mean_batch']:.1f} | {ratios[-1]:.2f}x |")
    print(f"{os.uname().nodename}, {os.cpu_count()} CPUs, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
          f"commit {harness.commit()}; {len(texts)} texts, {CONNECTIONS} connections, {DURATION_S} s\n")
    print("| layout | in-process ORT seq/s | server seq/s | p50 | p99 | mean batch | server / in-process |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(lines))
    print(f"\nmedian ratio {statistics.median(ratios):.2f}x, range {min(ratios):.2f}-{max(ratios):.2f}x")


if __name__ == "__main__":
    main()
