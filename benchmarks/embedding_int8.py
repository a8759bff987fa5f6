"""In-process: all-MiniLM-L6-v2 on the CPU in float32 against dynamic int8 (``quantize = "int8"``):
throughput and how far the int8 vectors point from the float32 ones (cosine).

Texts: the benchmark mix of benchmarks/embedding_bench.py's generator (two thirds short queries,
one third passages of 100-300 tokens), in batches of BATCH through ``predict_batch`` (which
tokenises, groups by length and pools, as the server does). Both variants run in alternation,
ROUNDS times; the best round of each is reported (the machine is noisy).

Usage: .venv/bin/python benchmarks/embedding_int8.py
  (settings by environment: TEXTS, BATCH, THREADS, ROUNDS, SEED, MODEL=folder)
Prints a markdown table, with the machine, date and commit.
"""

from __future__ import annotations

import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import harness
import numpy as np
from batchserve.backends.embedding import EmbeddingBackend
from batchserve.backends.embedding_requests import Passage
from batchserve.config import ModelConfig
from embedding_texts import benchmark_texts

TEXTS = int(os.environ.get("TEXTS", "256"))
BATCH = int(os.environ.get("BATCH", "32"))
THREADS = int(os.environ.get("THREADS", "2"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
SEED = int(os.environ.get("SEED", "0"))


def load(path: Path, quantize: str) -> EmbeddingBackend:
    config = ModelConfig(name=quantize, backend="embedding", path=path, max_batch_size=BATCH,
                         options={"quantize": quantize, "torch_threads": THREADS})
    backend = EmbeddingBackend(config)
    backend.load("cpu")
    backend.warmup()
    return backend


def run(backend: EmbeddingBackend, texts: list[str]) -> tuple[np.ndarray, float]:
    """The vectors and the texts per second of one pass over ``texts``."""
    started = time.perf_counter()
    vectors = [v for i in range(0, len(texts), BATCH)
               for v in backend.predict_batch([Passage(t, None) for t in texts[i:i + BATCH]])]
    return np.array(vectors), len(texts) / (time.perf_counter() - started)


def main() -> None:
    path = Path(os.environ["MODEL"]) if os.environ.get("MODEL") else harness.demo_artifact("minilm")
    texts = benchmark_texts(TEXTS, SEED)
    backends = {name: load(path, name) for name in ("none", "int8")}
    best = dict.fromkeys(backends, 0.0)
    vectors: dict[str, np.ndarray] = {}
    for _ in range(ROUNDS):
        for name, backend in backends.items():
            vectors[name], rate = run(backend, texts)
            best[name] = max(best[name], rate)
    cosine = (vectors["none"] * vectors["int8"]).sum(1)  # both are unit vectors
    print(f"{platform.node()}, {os.cpu_count()} CPUs, {THREADS} torch threads, "
          f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {harness.commit()}; "
          f"{TEXTS} texts, batches of {BATCH}")
    print("| weights | texts/s | vs float32 | cosine to float32: min | mean |")
    print("|---|---|---|---|---|")
    print(f"| float32 | {best['none']:.0f} | 1.00x | 1 | 1 |")
    print(f"| int8 (dynamic) | {best['int8']:.0f} | {best['int8'] / best['none']:.2f}x | "
          f"{cosine.min():.4f} | {cosine.mean():.4f} |")


if __name__ == "__main__":
    main()
