"""The demo transformer through batchserve vs its in-process limit, on short and long texts.

Texts are made of whole words of the demo vocabulary, so each has an exact token length drawn
from LENGTHS (a third of them long, as in shared/ANCHORS.md). The in-process limit runs the
backend's predict_batch (which tokenises, groups and runs the batch) on all texts sorted by
token length, in batches of 8, 16 and 32 (the fastest of PASSES passes), as one stream with all
the cores as torch threads and as one stream per core with one torch thread each (streams in
threads, as the server's ``instances`` run); the best of these is the limit. It is measured
before and after the server runs and the two are averaged, as the machine drifts. The server
gets one text per request from CONNECTIONS concurrent wrk connections, in random order, with
the limit's layout (instances x torch threads), max_batch_size 32 and length grouping on; then
with grouping off, with batching off (max_batch_size 1), and with grouping on in the other
layout (one instance of every core's threads, or one single-thread instance per core). The
headline: the server's better layout with grouping over the in-process best (both sides take
their best layout: which is faster flips between passes on this machine).

Usage: .venv/bin/python benchmarks/transformer_server.py   (needs wrk; ~5 minutes)
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import harness
from batchserve.backends.transformer import TransformerBackend
from batchserve.config import ModelConfig

ROOT = Path(__file__).resolve().parent.parent
LENGTHS = [int(n) for n in os.environ.get("LENGTHS", "8,16,24,32,200,256").split(",")]
TEXTS = int(os.environ.get("TEXTS", "256"))
CORES = int(os.environ.get("CORES", str(len(os.sched_getaffinity(0)))))
CONNECTIONS = int(os.environ.get("CONNECTIONS", "64"))
DURATION_S = int(os.environ.get("DURATION_S", "20"))
WARMUP_S = int(os.environ.get("WARMUP_S", "5"))
PORT = int(os.environ.get("PORT", "8093"))
MAX_LENGTH = max(LENGTHS)
BATCH_SIZES = (8, 16, 32)
PASSES = int(os.environ.get("PASSES", "2"))  # over all texts per layout; the fastest counts


class Layout(NamedTuple):
    """How the CPU is used: parallel streams (the server's instances) x torch threads each."""

    streams: int
    threads: int
    batch: int

    def __str__(self) -> str:
        return f"{self.streams} x {self.threads} thread(s), batch {self.batch}"


def demo_model() -> Path:
    return harness.demo_artifact("transformer")


def make_texts(path: Path, count: int = TEXTS, lengths: list[int] = LENGTHS, seed: int = 0) -> list[str]:
    """Texts of whole vocabulary words: n words give n + 2 tokens ([CLS], [SEP])."""
    vocab = json.loads((path / "tokenizer.json").read_text())["model"]["vocab"]
    words = [w for w in vocab if w.isalpha() and w.islower() and len(w) > 2]
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.choice(lengths) - 2)) for _ in range(count)]


def backend(path: Path, max_batch_size: int, threads: int) -> TransformerBackend:
    config = ModelConfig(name="t", backend="transformer", path=path, max_batch_size=max_batch_size,
                         options={"max_length": MAX_LENGTH, "torch_threads": threads})
    model = TransformerBackend(config)
    model.load("cpu")
    return model


def in_process(path: Path, texts: list[str]) -> dict[Layout, float]:
    results = {}
    for streams, threads in {(1, CORES), (CORES, 1)}:
        model = backend(path, max(BATCH_SIZES), threads)
        lengths = [len(ids) for ids in model.tokenize(texts)]
        assert set(lengths) <= set(LENGTHS), "texts must tokenize to the chosen lengths"
        ordered = [text for _, text in sorted(zip(lengths, texts, strict=True))]
        with ThreadPoolExecutor(streams) as pool:
            for size in BATCH_SIZES:
                batches = [ordered[start:start + size] for start in range(0, len(ordered), size)]
                list(pool.map(model.predict_batch, batches[:streams]))  # burn-in
                seconds = []
                for _ in range(PASSES):
                    started = time.perf_counter()
                    list(pool.map(model.predict_batch, batches))
                    seconds.append(time.perf_counter() - started)
                results[Layout(streams, threads, size)] = len(ordered) / min(seconds)
    return results


def serve(path: Path, bodies: Path, layout: Layout, grouping: bool) -> dict[str, Any]:
    config = (f'[[models]]\nname = "text"\nbackend = "transformer"\npath = "{path}"\n'
              f"max_batch_size = {layout.batch}\ninstances = {layout.streams}\nmax_queue = 4096\n"
              f"timeout_ms = 60000\noptions = {{ max_length = {MAX_LENGTH}, "
              f"length_grouping = {str(grouping).lower()}, torch_threads = {layout.threads} }}\n")
    env = {**os.environ, "BODIES": str(bodies)}
    with harness.batchserve(config, PORT) as (url, _):
        result = harness.measured_wrk(f"{url}/predict", warmup_s=WARMUP_S, duration_s=DURATION_S,
                                      connections=CONNECTIONS, script="bodies.lua", model="text", env=env)
    return {"layout": str(layout), "seq_s": result["rps"], "p50_ms": result["p50_ms"],
            "p99_ms": result["p99_ms"], "mean_batch": result["mean_batch"], "padding": result["padding"],
            "non_2xx": int(result["non_2xx"])}


def other_layout(layout: Layout) -> Layout:
    """The layout the in-process pass did not pick: one instance of every core's threads, or
    one single-thread instance per core. The pick rests on one noisy pass, and the server's
    best layout need not be the in-process one's, so the server runs both."""
    if layout.streams == 1:
        return Layout(CORES, 1, layout.batch)
    return Layout(1, CORES, layout.batch)


def main() -> None:
    path = demo_model()
    texts = make_texts(path)
    before = in_process(path, texts)
    best = max(before, key=lambda layout: before[layout])
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as handle:
        for text in texts:
            handle.write(json.dumps({"model": "text", "inputs": [text]}) + "\n")
        bodies = Path(handle.name)
    # The server takes the limit's instances x threads. Its batches are random draws from the queue,
    # split by length into groups: they need the largest size to give groups as big as the
    # limit's sorted batches, so max_batch_size is the largest measured.
    served = best._replace(batch=max(BATCH_SIZES))
    variants = {
        "on": ("length grouping on", served, True),
        "off": ("length grouping off", served, False),
        "nobatch": ("batching off (max_batch_size 1)", served._replace(batch=1), True),
        "other": ("length grouping on, the other layout", other_layout(served), True),
    }
    chosen = os.environ.get("VARIANTS", "on,off,nobatch,other").split(",")
    runs = {variants[v][0]: serve(path, bodies, variants[v][1], variants[v][2]) for v in chosen}
    bodies.unlink()
    after = in_process(path, texts)  # again: the machine drifts; the limit is the mean of both
    limit = {layout: (before[layout] + after[layout]) / 2 for layout in before}
    best = max(limit, key=lambda layout: limit[layout])
    commit = harness.commit()
    print(f"\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit {commit}, {CORES} cores; "
          f"{TEXTS} texts, token lengths uniform over {LENGTHS}\n")
    print("| in-process, sorted by length (streams x torch threads) | "
          + " | ".join(f"batch {size}" for size in BATCH_SIZES) + " |")
    print("|---|" + "---|" * len(BATCH_SIZES))
    for streams, threads in sorted({(layout.streams, layout.threads) for layout in limit}):
        print(f"| {streams} x {threads} | " + " | ".join(
            f"{limit[Layout(streams, threads, size)]:.1f}" for size in BATCH_SIZES) + " |")
    print(f"\n| server ({CONNECTIONS} connections, one text each) | instances x threads, batch | seq/s | p50 "
          "| p99 | mean batch | mean padding | non-2xx | vs in-process best |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, result in runs.items():
        print(f"| {label} | {result['layout']} | {result['seq_s']:.1f} | {result['p50_ms']:.0f} ms | "
              f"{result['p99_ms']:.0f} ms | {result['mean_batch']:.1f} | {result['padding']:.2f} | "
              f"{result['non_2xx']} | {result['seq_s'] / limit[best]:.2f} |")
    print(f"\nin-process best: {limit[best]:.1f} seq/s ({best})")
    grouped = [runs[variants[v][0]] for v in ("on", "other") if v in chosen]
    if grouped:
        top = max(grouped, key=lambda result: result["seq_s"])
        print(f"server best, length grouping on: {top['seq_s']:.1f} seq/s ({top['layout']}) = "
              f"**{top['seq_s'] / limit[best]:.2f}x** the in-process best")
    harness.save_results("transformer", {
        "commit": commit, "in_process": {str(k): v for k, v in limit.items()},
        "in_process_before": {str(k): v for k, v in before.items()},
        "in_process_after": {str(k): v for k, v in after.items()}, "server": runs})


if __name__ == "__main__":
    main()
