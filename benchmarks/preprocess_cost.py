"""Should preprocess run on the event loop or pay a thread hop? Per item cost of each.

Measures the sklearn backend's preprocess of one 10-feature row, and the round trip of
starlette's run_in_threadpool (what preprocess_in_thread = True costs per request) on an
event loop. Usage: .venv/bin/python benchmarks/preprocess_cost.py
"""

from __future__ import annotations

import asyncio
import time
import timeit
from pathlib import Path

from batchserve.backends.sklearn import SklearnBackend
from batchserve.config import ModelConfig
from starlette.concurrency import run_in_threadpool

ROOT = Path(__file__).resolve().parent.parent
ROW = [0.0381, 0.0507, 0.0617, 0.0219, -0.0442, -0.0348, -0.0434, -0.0026, 0.0199, -0.0176]


def main() -> None:
    artifact = ROOT / "models" / "artifacts" / "diabetes.joblib"
    backend = SklearnBackend(ModelConfig(name="d", backend="sklearn", path=artifact))
    backend.load("cpu")
    count = 100_000
    seconds = min(timeit.repeat(lambda: backend.preprocess(ROW, None), number=count, repeat=3))
    inline_us = seconds / count * 1e6

    async def hops(n: int) -> float:
        started = time.perf_counter()
        for _ in range(n):
            await run_in_threadpool(backend.preprocess, ROW, None)
        return (time.perf_counter() - started) / n * 1e6

    asyncio.run(hops(200))
    hop_us = min(asyncio.run(hops(5000)) for _ in range(3))
    print(f"sklearn preprocess inline: {inline_us:.2f} us per item; through run_in_threadpool: "
          f"{hop_us:.1f} us per call ({hop_us / inline_us:.0f}x)")


if __name__ == "__main__":
    main()
