"""In-process throughput of the transformer backend on the demo model: length grouping on and off.

A batch formed in arrival order mixes short and long texts; padded as one group every row costs
as much as the longest. This measures what sorting each batch by length and running rows of
very different lengths as separate groups (``length_grouping``) buys, per batch size. Rows are
texts of whole vocabulary words with exact token lengths drawn uniformly from LENGTHS (by default
a third of them long); ``predict_batch`` tokenises each batch, then runs it. Both modes run in
alternation, ROUNDS times, and the table reports the best round of each (the machine is noisy).

Usage: .venv/bin/python benchmarks/transformer_bench.py
  (settings by environment: SEQUENCES, BATCH_SIZES, LENGTHS, THREADS, ROUNDS, SEED)
Prints a markdown table, with the machine, date and commit.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import harness
from batchserve.backends.transformer import TransformerBackend
from batchserve.config import ModelConfig
from batchserve.metrics import Metrics
from transformer_server import make_texts

ROOT = Path(__file__).resolve().parent.parent
SEQUENCES = int(os.environ.get("SEQUENCES", "256"))
BATCH_SIZES = [int(b) for b in os.environ.get("BATCH_SIZES", "1,8,32").split(",")]
LENGTHS = [int(n) for n in os.environ.get("LENGTHS", "8,16,24,32,200,256").split(",")]
THREADS = int(os.environ.get("THREADS", "2"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
SEED = int(os.environ.get("SEED", "0"))


def demo_model() -> Path:
    return harness.demo_artifact("transformer")


def load(path: Path, grouping: bool, metrics: Metrics) -> TransformerBackend:
    name = "grouped" if grouping else "arrival"
    config = ModelConfig(name=name, backend="transformer", path=path, max_batch_size=max(BATCH_SIZES),
                         options={"max_length": max(LENGTHS), "length_grouping": grouping,
                                  "torch_threads": THREADS})
    backend = TransformerBackend(config, metrics.for_model(name))
    backend.load("cpu")
    return backend


def seconds(backend: TransformerBackend, rows: list[str], batch_size: int) -> float:
    """Time to run every row, in arrival order, in batches of ``batch_size``."""
    started = time.perf_counter()
    for start in range(0, len(rows), batch_size):
        backend.predict_batch(rows[start:start + batch_size])
    return time.perf_counter() - started


def padding_ratio(metrics: Metrics, name: str) -> float:
    """Mean padding ratio of the batches run so far (the histogram's sum / count)."""
    total = metrics.registry.get_sample_value("batchserve_padding_ratio_sum", {"model": name}) or 0.0
    count = metrics.registry.get_sample_value("batchserve_padding_ratio_count", {"model": name}) or 1.0
    return total / count


def run(batch_size: int, backends: dict[str, TransformerBackend], rows: list[str]) -> list[str]:
    metrics = Metrics(max_batch_size=batch_size)
    for name, backend in backends.items():
        backend.metrics = metrics.for_model(name)
        seconds(backend, rows[: 2 * batch_size], batch_size)  # burn-in
    best = dict.fromkeys(backends, float("inf"))
    for _ in range(ROUNDS):
        for name, backend in backends.items():
            best[name] = min(best[name], seconds(backend, rows, batch_size))
    rates = {name: len(rows) / best[name] for name in backends}
    return [f"| {batch_size} | {rates['arrival']:.0f} | {rates['grouped']:.0f} | "
            f"{rates['grouped'] / rates['arrival']:.2f}x | {padding_ratio(metrics, 'arrival'):.2f} | "
            f"{padding_ratio(metrics, 'grouped'):.2f} |"]


def main() -> None:
    import torch

    path = demo_model()
    metrics = Metrics(max_batch_size=max(BATCH_SIZES))
    backends = {"arrival": load(path, False, metrics), "grouped": load(path, True, metrics)}
    rows = make_texts(path, SEQUENCES, LENGTHS, SEED)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{THREADS} threads, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {commit}")
    print(f"{SEQUENCES} sequences, token lengths uniform over {LENGTHS}, best of {ROUNDS} rounds\n")
    print("| batch size | arrival seq/s | grouped seq/s | speed-up | arrival padding | grouped padding |")
    print("| --- | --- | --- | --- | --- | --- |")
    for batch_size in BATCH_SIZES:
        print("\n".join(run(batch_size, backends, rows)), flush=True)


if __name__ == "__main__":
    main()
