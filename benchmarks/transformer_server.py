"""The demo transformer through batchserve vs its in-process limit, on short and long texts.

Texts are made of whole words of the demo vocabulary, so each has an exact token length drawn
from LENGTHS (a third of them long, as in shared/ANCHORS.md). The in-process limit runs the
backend's predict_batch on all texts sorted by length, in batches of 8, 16 and 32 (the best is
the limit), before and after the server runs (their mean, as the machine drifts). The server
gets one text per request from CONNECTIONS concurrent wrk connections, in random order, with
length grouping on, off, and with batching off (max_batch_size 1).

Usage: .venv/bin/python benchmarks/transformer_server.py   (needs wrk; ~4 minutes)
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import harness

from server.backends.transformer import TransformerBackend
from server.config import ModelConfig

ROOT = Path(__file__).resolve().parent.parent
LENGTHS = [int(n) for n in os.environ.get("LENGTHS", "8,16,24,32,200,256").split(",")]
TEXTS = int(os.environ.get("TEXTS", "256"))
THREADS = int(os.environ.get("THREADS", "2"))
CONNECTIONS = int(os.environ.get("CONNECTIONS", "64"))
DURATION_S = int(os.environ.get("DURATION_S", "20"))
WARMUP_S = int(os.environ.get("WARMUP_S", "5"))
PORT = int(os.environ.get("PORT", "8093"))
MAX_LENGTH = max(LENGTHS)


def demo_model() -> Path:
    return harness.demo_artifact("transformer")


def make_texts(path: Path) -> list[str]:
    """Texts of whole vocabulary words: n words give n + 2 tokens ([CLS], [SEP])."""
    vocab = json.loads((path / "tokenizer.json").read_text())["model"]["vocab"]
    words = [w for w in vocab if w.isalpha() and w.islower() and len(w) > 2]
    rng = random.Random(0)
    return [" ".join(rng.choice(words) for _ in range(rng.choice(LENGTHS) - 2)) for _ in range(TEXTS)]


def backend(path: Path, max_batch_size: int) -> TransformerBackend:
    config = ModelConfig(name="t", backend="transformer", path=path, max_batch_size=max_batch_size,
                         options={"max_length": MAX_LENGTH, "torch_threads": THREADS})
    model = TransformerBackend(config)
    model.load("cpu")
    return model


def in_process(path: Path, texts: list[str]) -> dict[int, float]:
    model = backend(path, 32)
    rows = sorted((model.preprocess(t, None) for t in texts), key=lambda r: len(r.ids))
    lengths = [len(r.ids) for r in rows]
    assert set(lengths) <= set(LENGTHS), "texts must tokenize to the chosen lengths"
    results = {}
    for size in (8, 16, 32):
        model.predict_batch(rows[:size])  # burn-in
        started = time.perf_counter()
        for start in range(0, len(rows), size):
            model.predict_batch(rows[start:start + size])
        results[size] = len(rows) / (time.perf_counter() - started)
    return results


def serve(path: Path, bodies: Path, max_batch_size: int, grouping: bool) -> dict[str, Any]:
    config = (f'[[models]]\nname = "text"\nbackend = "transformer"\npath = "{path}"\n'
              f"max_batch_size = {max_batch_size}\nmax_queue = 4096\ntimeout_ms = 60000\n"
              f"options = {{ max_length = {MAX_LENGTH}, length_grouping = {str(grouping).lower()}, "
              f"torch_threads = {THREADS} }}\n")
    env = {**os.environ, "BODIES": str(bodies)}
    with harness.batchserve(config, PORT) as (url, _):
        target = f"{url}/predict"
        harness.wrk(target, connections=CONNECTIONS, duration_s=WARMUP_S, script="bodies.lua", env=env)
        before = _sample(url)
        result = harness.wrk(target, connections=CONNECTIONS, duration_s=DURATION_S, script="bodies.lua",
                             env=env)
        after = _sample(url)
    delta = {k: after[k] - before[k] for k in after}
    return {"seq_s": result["rps"], "p50_ms": result["p50_ms"], "p99_ms": result["p99_ms"],
            "mean_batch": delta["rows"] / delta["batches"] if delta["batches"] else 0.0,
            "padding": delta["padding_sum"] / delta["padding_count"] if delta["padding_count"] else 0.0,
            "non_2xx": int(result["non_2xx"])}


def _sample(url: str) -> dict[str, float]:
    names = {"rows": "batchserve_batch_size_sum", "batches": "batchserve_batch_size_count",
             "padding_sum": "batchserve_padding_ratio_sum", "padding_count": "batchserve_padding_ratio_count"}
    return {key: harness.metric(url, name, "text") for key, name in names.items()}


def main() -> None:
    path = demo_model()
    texts = make_texts(path)
    before = in_process(path, texts)
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as handle:
        for text in texts:
            handle.write(json.dumps({"model": "text", "inputs": [text]}) + "\n")
        bodies = Path(handle.name)
    variants = {
        "on": ("length grouping on (max_batch_size 32)", 32, True),
        "off": ("length grouping off (max_batch_size 32)", 32, False),
        "nobatch": ("batching off (max_batch_size 1)", 1, True),
    }
    chosen = os.environ.get("VARIANTS", "on,off,nobatch").split(",")
    runs = {variants[v][0]: serve(path, bodies, variants[v][1], variants[v][2]) for v in chosen}
    bodies.unlink()
    after = in_process(path, texts)  # again: the machine drifts; the limit is the mean of both
    limit = {size: (before[size] + after[size]) / 2 for size in before}
    best = max(limit, key=lambda size: limit[size])
    commit = harness.commit()
    print(f"\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit {commit}, {os.cpu_count()} "
          f"cores, torch threads {THREADS}; {TEXTS} texts, token lengths uniform over {LENGTHS}\n")
    print("| in-process, sorted by length, batch | " + " | ".join(str(s) for s in limit) + " |")
    print("|---|" + "---|" * len(limit))
    print("| seq/s | " + " | ".join(f"{v:.1f}" for v in limit.values()) + " |\n")
    print(f"| server ({CONNECTIONS} connections, one text each) | seq/s | p50 | p99 | mean batch | "
          "mean padding | non-2xx | vs in-process best |")
    print("|---|---|---|---|---|---|---|---|")
    for label, result in runs.items():
        print(f"| {label} | {result['seq_s']:.1f} | {result['p50_ms']:.0f} ms | {result['p99_ms']:.0f} ms | "
              f"{result['mean_batch']:.1f} | {result['padding']:.2f} | {result['non_2xx']} | "
              f"{result['seq_s'] / limit[best]:.2f} |")
    print(f"\nin-process best: {limit[best]:.1f} seq/s at batch {best}")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / f"transformer-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(
        json.dumps({"commit": commit, "in_process": limit, "in_process_before": before,
                    "in_process_after": after, "server": runs}, indent=2))


if __name__ == "__main__":
    main()
