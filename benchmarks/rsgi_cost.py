"""batchserve's CPU per request on its RSGI interface against the lean batched floor's, in-process.

One uvloop event loop runs CONCURRENCY clients, each sending one-row diabetes POSTs one after the
other to an RSGI app through a fake RSGI protocol (the body given at once, as granian's
``protocol()`` does for a declared length; the answer's ``response_bytes`` kept; a client that
never disconnects), until REQUESTS have been answered. No sockets, no HTTP parsing: what is
measured is the apps' own Python, the part granian's Rust side does not do (granian also makes a
task per request; here each client's task awaits its requests in turn: that cost, the same for
both apps, is left out). Apps measured, in alternating rounds:

- ``lean``: benchmarks/lean_floor_app.py (one future per request, one scikit-learn ``predict``
  per loop pass, orjson);
- ``batchserve``: ``rsgi.RsgiApp`` over batchserve's app on the same model (models.toml as
  ``hot_path_cost.py`` writes it: ``max_batch_size = 64``, ``max_wait_ms = 0``).

Each round warms up (WARMUP requests, so that the batcher has measured where its batches run),
then times REQUESTS requests with ``time.process_time`` (this process, all threads). The line
printed is each app's CPU microseconds per request by round, their medians, spreads
(max/min) and the ratio batchserve / lean, per round and of the medians.

Usage: .venv/bin/python benchmarks/rsgi_cost.py   (REQUESTS, WARMUP, CONCURRENCY, ROUNDS)
       PROFILE=1 ...: one batchserve round under cProfile instead, its top functions printed.
"""

from __future__ import annotations

import asyncio
import cProfile
import os
import pstats
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import harness
import lean_floor_app
from batchserve.app import create_app
from batchserve.config import load_models
from batchserve.fastpath import BatchserveApp
from batchserve.rsgi import RsgiApp
from batchserve.settings import ServerSettings
from hot_path_cost import BODY, models_toml, run

REQUESTS = int(os.environ.get("REQUESTS", "40000"))
WARMUP = int(os.environ.get("WARMUP", "4000"))
CONCURRENCY = int(os.environ.get("CONCURRENCY", "64"))
ROUNDS = int(os.environ.get("ROUNDS", "4"))
PROFILE = os.environ.get("PROFILE", "") == "1"

_HEADERS = {"host": "127.0.0.1", "content-type": "application/json", "content-length": str(len(BODY))}


class FakeScope:
    """RSGI's scope of one POST /predict."""

    proto = "http"
    http_version = "1.1"
    method = "POST"
    scheme = "http"
    path = "/predict"
    query_string = ""
    authority = None
    client = "127.0.0.1:1"
    server = "127.0.0.1:8000"
    headers = _HEADERS  # looked up by lower-case name, in C (granian's: in Rust)


class FakeProtocol:
    """RSGI's HTTP protocol of one request: its body at once, its answer kept."""

    __slots__ = ("status",)

    def __init__(self) -> None:
        self.status = 0

    async def __call__(self) -> bytes:
        return BODY

    def __aiter__(self) -> FakeProtocol:
        return self

    async def __anext__(self) -> bytes:  # never asked for: the body's length is declared
        raise StopAsyncIteration

    def client_disconnect(self) -> asyncio.Future[None]:  # a client that stays
        return asyncio.get_running_loop().create_future()

    def response_bytes(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status


async def drive(app: Any, requests: int) -> float:
    """CPU seconds per request for ``requests`` requests, CONCURRENCY at a time; every answer a 200."""
    scope = FakeScope()
    bad = 0

    async def client(count: int) -> None:
        nonlocal bad
        for _ in range(count):
            protocol = FakeProtocol()
            await app.__rsgi__(scope, protocol)
            bad += protocol.status != 200

    per_client = max(1, requests // CONCURRENCY)
    started = time.process_time()
    await asyncio.gather(*(client(per_client) for _ in range(CONCURRENCY)))
    used = time.process_time() - started
    if bad:
        raise SystemExit(f"rsgi_cost: {bad} answers other than 200")
    return used / (per_client * CONCURRENCY)


async def lean() -> float:
    app = lean_floor_app.LeanFloor(harness.demo_artifact("diabetes"))
    app.__rsgi_init__(asyncio.get_running_loop())
    await drive(app, WARMUP)
    return await drive(app, REQUESTS)


async def batchserve(config: Path, profile: cProfile.Profile | None = None) -> float:
    app = create_app(ServerSettings(config=config, log_level="warning"), load_models(config))
    state = app.state.batchserve
    assert isinstance(app, BatchserveApp)  # create_app's, with its inference routes (fastpath.py)
    front = RsgiApp(app, app.fast_path, limit_concurrency=4 * CONCURRENCY)
    async with app.router.lifespan_context(app):
        while not state.registry.ready:
            await asyncio.sleep(0.01)
        await drive(front, WARMUP)
        if profile is not None:
            profile.enable()
        try:
            return await drive(front, REQUESTS)
        finally:
            if profile is not None:
                profile.disable()


def main() -> None:
    costs: dict[str, list[float]] = {"lean": [], "batchserve": []}
    with tempfile.TemporaryDirectory() as folder:
        config = models_toml(Path(folder), "sklearn")
        if PROFILE:
            profile = cProfile.Profile()
            run(batchserve(config, profile))
            pstats.Stats(profile).sort_stats("tottime").print_stats(30)
            return
        for _ in range(ROUNDS):
            costs["lean"].append(run(lean()))
            costs["batchserve"].append(run(batchserve(config)))
    us = {name: [1e6 * value for value in values] for name, values in costs.items()}
    median = {name: statistics.median(values) for name, values in us.items()}
    ratios = [b / a for a, b in zip(us["lean"], us["batchserve"], strict=True)]
    print(f"\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit {harness.commit()}, "
          f"{os.cpu_count()} cores; {REQUESTS} requests ({WARMUP} warm-up), {CONCURRENCY} at a time, "
          f"{ROUNDS} alternating rounds\n")
    print("| app | CPU us / request by round | median | spread (max/min) |\n|---|---|---|---|")
    for name, values in us.items():
        print(f"| {name} | {' / '.join(f'{v:.1f}' for v in values)} | {median[name]:.1f} | "
              f"{max(values) / min(values):.2f} |")
    print(f"\nbatchserve / lean by round: {' / '.join(f'{r:.2f}' for r in ratios)}; of the medians: "
          f"{median['batchserve'] / median['lean']:.2f}")
    harness.save_results("rsgi_cost", {"us": us, "median_us": median, "ratios": ratios,
                                       "commit": harness.commit()})


if __name__ == "__main__":
    main()
