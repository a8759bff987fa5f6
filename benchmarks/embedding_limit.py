"""The in-process limit for the embedding benchmark: sentence-transformers' own ``encode`` (which
sorts its texts by length and batches them) on a model folder, texts per second.

Each layout is ``streams x threads``: ``streams`` Python threads, each encoding its share of the
texts (a contiguous slice, sorted by ``encode`` itself) with ``threads`` torch threads, as the
server's ``instances`` run. For each layout and batch size: one untimed call (one-time costs),
then PASSES passes over all texts; the fastest pass counts. Runs in its own process
(embedding_bench.py starts it, pinned as the servers are) and prints one JSON object:
``{"rates": [{"streams", "threads", "batch", "texts_per_s"}], "tokens": {...}}``.

Usage: .venv/bin/python benchmarks/embedding_limit.py MODEL_FOLDER --texts 512 --seed 0
       --layouts 1x2,2x1 --batches 16,32,64 --passes 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from embedding_texts import benchmark_texts


def layouts(text: str) -> list[tuple[int, int]]:
    """``1x2,2x1`` as [(1, 2), (2, 1)]; ``auto``: one stream with every core, and one per core."""
    if text == "auto":
        cores = len(os.sched_getaffinity(0))
        return sorted({(1, cores), (cores, 1)})
    pairs = [part.split("x") for part in text.split(",")]
    return [(int(streams), int(threads)) for streams, threads in pairs]


def token_counts(model: Any, texts: list[str]) -> dict[str, Any]:
    """How many tokens the model reads per text (special tokens included, truncated), by kind:
    what the mix is made of, for the report."""
    tokenize = getattr(model, "preprocess", None) or model.tokenize  # preprocess: sentence-transformers 6
    lengths = [int(n) for n in tokenize(texts)["attention_mask"].sum(dim=1).tolist()]
    short = [n for n in lengths if n <= 32]
    long = [n for n in lengths if n > 32]

    def summary(values: list[int]) -> dict[str, float]:
        if not values:
            return {"count": 0}
        return {"count": len(values), "min": min(values), "mean": statistics.fmean(values),
                "max": max(values)}

    return {"short": summary(short), "long": summary(long), "total": sum(lengths)}


def measure(model: Any, texts: list[str], chosen: list[tuple[int, int]], batches: list[int],
            passes: int) -> list[dict[str, float]]:
    import torch

    rates = []
    for streams, threads in chosen:
        torch.set_num_threads(threads)
        share = -(-len(texts) // streams)
        slices = [texts[start:start + share] for start in range(0, len(texts), share)]
        with ThreadPoolExecutor(streams) as pool:
            for batch in batches:
                def encode(part: list[str], batch: int = batch) -> Any:
                    return model.encode(part, batch_size=batch, convert_to_numpy=True)

                list(pool.map(encode, [part[:batch] for part in slices]))  # untimed: one-time costs
                seconds = []
                for _ in range(passes):
                    started = time.perf_counter()
                    list(pool.map(encode, slices))
                    seconds.append(time.perf_counter() - started)
                rates.append({"streams": streams, "threads": threads, "batch": batch,
                              "texts_per_s": len(texts) / min(seconds)})
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layouts", default="auto", help="streams x torch threads: 1x2,2x1 (auto)")
    parser.add_argument("--batches", default="16,32,64")
    parser.add_argument("--passes", type=int, default=2)
    args = parser.parse_args()
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(args.folder), device="cpu", local_files_only=True)
    texts = benchmark_texts(args.texts, args.seed)
    rates = measure(model, texts, layouts(args.layouts), [int(b) for b in args.batches.split(",")],
                    args.passes)
    print(json.dumps({"rates": rates, "tokens": token_counts(model, texts),
                      "cores": sorted(os.sched_getaffinity(0))}))


if __name__ == "__main__":
    main()
