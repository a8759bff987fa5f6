"""One-shot GPU check: resnet50 and the demo transformer in float16, server vs in-process.

For each model: load the backend in-process on the GPU (the same class the server uses), time
predict_batch on preprocessed rows at several batch sizes (outputs come back to the host, so
each timing includes the device sync), keep the best; then serve the model with that
max_batch_size and drive it with a multi-process Python load generator (wrk may be absent on a
GPU machine) for DURATION_S seconds; report rows/s, p50/p99 and server / in-process. Writes
benchmarks/results/gpu_check-<time>.json and prints a markdown table. Finishes in ~3 minutes;
written to need one run.

Usage: .venv/bin/python benchmarks/gpu_check.py           (DEVICE=cpu DURATION_S=3 for a dry run)
"""

from __future__ import annotations

import asyncio
import base64
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import harness
import httpx
import sklearn.datasets

from server.backends import backend_class
from server.config import ModelConfig

ROOT = Path(__file__).resolve().parent.parent
DEVICE = os.environ.get("DEVICE", "cuda")
DTYPE = os.environ.get("DTYPE", "float16" if DEVICE.startswith("cuda") else "float32")
DURATION_S = float(os.environ.get("DURATION_S", "20"))
LOAD_PROCESSES = int(os.environ.get("LOAD_PROCESSES", "4"))
CONCURRENCY = int(os.environ.get("CONCURRENCY", "32"))  # per load process
BATCH_SIZES = [int(b) for b in os.environ.get("BATCH_SIZES", "1,8,32,64").split(",")]
PORT = int(os.environ.get("PORT", "8094"))
PHOTOS = Path(os.path.dirname(sklearn.datasets.__file__)) / "images"
TEXT = "The battery is fine but the screen scratches far too easily " * 6  # ~70 tokens


def artifacts() -> dict[str, Path]:
    return {name: harness.demo_artifact(name) for name in ("resnet50", "transformer")}


def items(backend: str) -> list[Any]:
    """The item the load generator sends, as JSON would carry it."""
    if backend == "resnet50":
        return [base64.b64encode((PHOTOS / "china.jpg").read_bytes()).decode()]
    return [TEXT]


def in_process(backend: str, path: Path) -> dict[int, float]:
    config = ModelConfig(name=backend, backend=backend, path=path, device=DEVICE,
                         max_batch_size=max(BATCH_SIZES), options={"dtype": DTYPE})
    model = backend_class(backend)(config)
    model.load(DEVICE)
    parameters = model.parse_parameters({})
    rows = [model.preprocess(item, parameters) for item in items(backend)]
    results = {}
    for size in BATCH_SIZES:
        batch = [rows[i % len(rows)] for i in range(size)]
        model.predict_batch(batch)  # warm-up for this shape
        runs = max(3, int(64 / size))
        started = time.perf_counter()
        for _ in range(runs):
            model.predict_batch(batch)
        results[size] = runs * size / (time.perf_counter() - started)
    model.unload()
    return results


def _client(url: str, body: bytes, headers: dict[str, str], until: float,
            out: multiprocessing.Queue[list[float]]) -> None:
    async def run() -> list[float]:
        latencies: list[float] = []
        async with httpx.AsyncClient(timeout=60) as client:
            async def worker() -> None:
                while time.time() < until:
                    started = time.perf_counter()
                    response = await client.post(url, content=body, headers=headers)
                    if response.status_code == 200:
                        latencies.append(time.perf_counter() - started)
            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return latencies
    out.put(asyncio.run(run()))


def serve(backend: str, path: Path, max_batch_size: int) -> dict[str, float]:
    config = (f'[[models]]\nname = "m"\nbackend = "{backend}"\npath = "{path}"\ndevice = "{DEVICE}"\n'
              f'max_batch_size = {max_batch_size}\nmax_queue = 8192\ntimeout_ms = 60000\n'
              f'options = {{ dtype = "{DTYPE}" }}\n')
    if backend == "resnet50":
        body, headers = (PHOTOS / "china.jpg").read_bytes(), {"content-type": "image/jpeg"}
    else:
        body, headers = json.dumps({"inputs": [TEXT]}).encode(), {"content-type": "application/json"}
    latencies: list[float] = []
    with harness.batchserve(config, PORT) as (url, _):
        for duration, keep in ((min(5.0, DURATION_S), False), (DURATION_S, True)):  # warm-up, run
            queue: multiprocessing.Queue[list[float]] = multiprocessing.Queue()
            until = time.time() + duration
            workers = [multiprocessing.Process(target=_client, args=(f"{url}/predict/m", body, headers,
                                                                     until, queue))
                       for _ in range(LOAD_PROCESSES)]
            for worker in workers:
                worker.start()
            collected = [queue.get(timeout=duration + 120) for _ in workers]
            for worker in workers:
                worker.join()
            if keep:
                latencies = sorted(x for part in collected for x in part)
    if not latencies:
        return {"rows_s": 0.0, "p50_ms": 0.0, "p99_ms": 0.0}
    return {"rows_s": len(latencies) / DURATION_S,
            "p50_ms": statistics.median(latencies) * 1000,
            "p99_ms": latencies[int(0.99 * (len(latencies) - 1))] * 1000}


def main() -> None:
    import torch

    if DEVICE.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA GPU visible to torch; run with DEVICE=cpu for a dry run")
    gpu = torch.cuda.get_device_name(0) if DEVICE.startswith("cuda") else platform.processor()
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                              "device": f"{DEVICE} ({gpu})", "dtype": DTYPE, "torch": torch.__version__}
    lines = ["| model | in-process best rows/s (batch) | server rows/s | p50 ms | p99 ms "
             "| server / in-process |", "|---|---|---|---|---|---|"]
    for backend, path in artifacts().items():
        limit = in_process(backend, path)
        best = max(limit, key=lambda size: limit[size])
        served = serve(backend, path, best)
        report[backend] = {"in_process": limit, "best_batch": best, "server": served}
        lines.append(f"| {backend} | {limit[best]:.0f} ({best}) | {served['rows_s']:.0f} | "
                     f"{served['p50_ms']:.1f} | {served['p99_ms']:.1f} | "
                     f"{served['rows_s'] / limit[best]:.2f} |")
    print(f"\n{report['date']}, {report['device']}, {DTYPE}, torch {report['torch']}\n")
    print("\n".join(lines))
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / f"gpu_check-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
