"""ResNet50 on CPU: batchserve against a fair in-process limit, in alternating rounds.

The limit runs the backend itself, as the server does: its own ``preprocess`` (PIL decode,
resize, crop; 8-bit rows) on a pool of ``DECODE_THREADS`` threads, decoding the next batch
while ``predict_batch`` (normalize once per batch, forward) runs the current one, at each
layout of torch threads x batch size in ``LAYOUTS``; the fastest layout is the round's limit.
Then the server runs that layout (``torch_threads``, ``max_batch_size``) with ``CONNECTIONS``
wrk clients POSTing scikit-learn's two photos as raw JPEG bodies. Limit and server alternate
for ``ROUNDS`` rounds (the machine drifts: each round's ratio is against its own limit), and
the median ratio is reported; batching off (max_batch_size 1) runs once at the end.

Usage: .venv/bin/python benchmarks/resnet50_bench.py   (needs wrk; ~4 minutes)
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import harness
import sklearn.datasets

ROOT = Path(__file__).resolve().parent.parent
IMAGES_DIR = Path(os.path.dirname(sklearn.datasets.__file__)) / "images"
PHOTOS = [IMAGES_DIR / "china.jpg", IMAGES_DIR / "flower.jpg"]
LAYOUTS = [tuple(int(v) for v in layout.split("x"))
           for layout in os.environ.get("LAYOUTS", "1x4,1x8,2x4,2x8").split(",")]
"""torch threads x batch size."""
DECODE_THREADS = int(os.environ.get("DECODE_THREADS", str(len(os.sched_getaffinity(0)))))
"""The server decodes on up to ``preprocess_concurrency`` threads, by default the cores."""
ROUNDS = int(os.environ.get("ROUNDS", "3"))
CONNECTIONS = int(os.environ.get("CONNECTIONS", "16"))
DURATION_S = int(os.environ.get("DURATION_S", "20"))
WARMUP_S = int(os.environ.get("WARMUP_S", "5"))
IMAGES = int(os.environ.get("IMAGES", "64"))
PORT = int(os.environ.get("PORT", "8092"))


def in_process(weights: Path, threads: int, batch: int) -> float:
    """img/s of the backend's preprocess (on a pool, one batch ahead) and predict_batch."""
    from batchserve.backends.resnet50 import ResNet50Backend
    from batchserve.config import ModelConfig

    config = ModelConfig(name="resnet50", backend="resnet50", path=weights, max_batch_size=batch,
                         options={"torch_threads": threads})
    backend = ResNet50Backend(config)
    backend.load("cpu")
    backend.warmup()
    parameters = backend.parse_parameters({})
    jpegs = [p.read_bytes() for p in PHOTOS]
    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        def decode(start: int) -> list[Future[Any]]:
            return [pool.submit(backend.preprocess, jpegs[i % 2], parameters)
                    for i in range(start, start + batch)]

        def run(count: int) -> None:
            pending = decode(0)
            for start in range(0, count, batch):
                rows = [future.result() for future in pending]
                if start + batch < count:
                    pending = decode(start + batch)  # decoded while this batch runs
                backend.predict_batch(rows)

        run(batch * 2)  # burn-in
        started = time.perf_counter()
        run(IMAGES)
        rate = IMAGES / (time.perf_counter() - started)
    backend.unload()
    return rate


def serve(weights: Path, threads: int, max_batch_size: int) -> dict[str, Any]:
    config = (f'[[models]]\nname = "resnet50"\nbackend = "resnet50"\npath = "{weights}"\n'
              f"max_batch_size = {max_batch_size}\nmax_queue = 1024\ntimeout_ms = 60000\n"
              f"options = {{ torch_threads = {threads} }}\n")
    env = {**os.environ, "IMAGES": ":".join(str(p) for p in PHOTOS)}
    with harness.batchserve(config, PORT) as (url, _):
        result = harness.measured_wrk(f"{url}/predict/resnet50", warmup_s=WARMUP_S, duration_s=DURATION_S,
                                      connections=CONNECTIONS, script="upload.lua", model="resnet50",
                                      env=env)
    return {"img_s": result["rps"], "p50_ms": result["p50_ms"], "p99_ms": result["p99_ms"],
            "mean_batch": result["mean_batch"], "non_2xx": int(result["non_2xx"]),
            "socket_errors": int(result.get("socket_errors", 0))}


def main() -> int:
    weights = harness.demo_artifact("resnet50")
    rounds: list[dict[str, Any]] = []
    for _ in range(ROUNDS):
        limits = {f"{t}x{b}": in_process(weights, t, b) for t, b in LAYOUTS}
        best = max(limits, key=lambda layout: limits[layout])
        threads, batch = (int(v) for v in best.split("x"))
        served = serve(weights, threads, batch)
        rounds.append({"limits": limits, "best": best, "server": served,
                       "ratio": served["img_s"] / limits[best]})
    threads, batch = (int(v) for v in rounds[-1]["best"].split("x"))
    off = serve(weights, threads, 1)
    commit = harness.commit()
    print(f"\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit {commit}, "
          f"{os.cpu_count()} cores, decode threads {DECODE_THREADS}\n")
    print("| round | " + " | ".join(f"limit {t}x{b}" for t, b in LAYOUTS)
          + " | server (best layout) | p50 | p99 | mean batch | non-2xx | server / limit |")
    print("|---|" + "---|" * len(LAYOUTS) + "---|---|---|---|---|---|")
    for index, r in enumerate(rounds, 1):
        s = r["server"]
        print(f"| {index} | " + " | ".join(f"{v:.1f}" for v in r["limits"].values())
              + f" | {s['img_s']:.1f} ({r['best']}) | {s['p50_ms']:.0f} ms | {s['p99_ms']:.0f} ms | "
              f"{s['mean_batch']:.1f} | {s['non_2xx'] + s['socket_errors']} | {r['ratio']:.2f} |")
    ratios = [r["ratio"] for r in rounds]
    print(f"\nserver / fair limit: median {statistics.median(ratios):.2f} "
          f"(rounds {', '.join(f'{v:.2f}' for v in ratios)}); batching off (max_batch_size 1, "
          f"{threads} torch threads): {off['img_s']:.1f} img/s, on / off = "
          f"{rounds[-1]['server']['img_s'] / off['img_s']:.2f}")
    harness.save_results("resnet50", {"commit": commit, "decode_threads": DECODE_THREADS,
                                      "rounds": rounds, "batching_off": off})
    failed = [r for r in (*(r["server"] for r in rounds), off) if r["non_2xx"] or r["socket_errors"]]
    if failed:
        print(f"FAILED: {len(failed)} server runs had non-2xx answers or socket errors", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
