"""What each layer of batchserve's request path costs, in-process, without sockets or uvicorn.

One event loop (uvloop) runs CONCURRENCY requests at a time, each a POST of one diabetes row
handed to an ASGI app with a receive that gives the body and a send that drops the answer, as
uvicorn would, until REQUESTS have been answered. Per request, in CPU microseconds of this
process (its time, all threads, over the requests):

- ``raw``: benchmarks/raw_floor_app.py (read the body, orjson-parse it, answer a constant);
- ``pipeline, fake model``: batchserve's app (the fast path, the pipeline, the batcher, the
  metrics, the encoding) on a backend that answers a constant per row (tests' echo-like
  backend defined here), so the model costs nothing;
- ``pipeline, diabetes``: the same with the real LinearRegression (``predict_batch`` on the
  batches the batcher forms, ~CONCURRENCY rows);
- ``model only``: the backend's ``predict_batch`` on batches of the mean size the pipeline
  formed, per row.

So ``pipeline, fake model`` - ``raw`` is batchserve's own cost per request over ASGI, and
``pipeline, diabetes`` - ``pipeline, fake model`` the model's. benchmarks/http_floor.py measures
the whole thing over sockets, against the floors.

Usage: .venv/bin/python benchmarks/hot_path_cost.py   (REQUESTS, CONCURRENCY, ROUNDS)
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import harness
import raw_floor_app
import uvloop
from batchserve.app import create_app
from batchserve.backends import Backend
from batchserve.config import load_models
from batchserve.settings import ServerSettings
from starlette.types import ASGIApp, Message

REQUESTS = int(os.environ.get("REQUESTS", "20000"))
CONCURRENCY = int(os.environ.get("CONCURRENCY", "64"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
BODY = (b'{"model": "diabetes", "inputs": [[0.0381, 0.0507, 0.0617, 0.0219, -0.0442, -0.0348, '
        b'-0.0434, -0.0026, 0.0199, -0.0176]]}')
HEADERS = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
           (b"content-length", str(len(BODY)).encode())]

T = TypeVar("T")
App = ASGIApp


class ConstantBackend(Backend[list[float], float]):
    """A model that costs nothing: 150.0 per row (its batches may run on the loop, as sklearn's)."""

    predict_on_loop_when_cheap = True

    def load(self, device: str) -> None:
        pass

    def preprocess(self, item: Any, parameters: Any) -> list[float]:
        return item  # type: ignore[no-any-return]

    def predict_batch(self, rows: list[list[float]]) -> list[float]:
        return [150.0] * len(rows)

    def warmup(self) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {"input": {"type": "array"}, "output": {"type": "number"}}


def scope(path: str) -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
            "root_path": "", "headers": HEADERS, "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000)}


async def drive(app: App, path: str) -> float:
    """CPU seconds per request for REQUESTS requests, CONCURRENCY at a time."""
    statuses: list[int] = []

    async def one() -> None:
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": BODY, "more_body": False}
            await asyncio.Event().wait()  # a client that stays: as a live connection does
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await app(scope(path), receive, send)

    async def client(count: int) -> None:
        for _ in range(count):
            await one()

    started = time.process_time()
    await asyncio.gather(*(client(REQUESTS // CONCURRENCY) for _ in range(CONCURRENCY)))
    used = time.process_time() - started
    if set(statuses) != {200}:
        raise SystemExit(f"hot_path_cost: answers other than 200 on {path}: {set(statuses)}")
    return used / len(statuses)


async def with_app(config: Path, path: str) -> tuple[float, float]:
    """CPU per request through batchserve's app (its ASGI interface), and the mean batch it
    formed."""
    app = create_app(ServerSettings(config=config, log_level="warning"), load_models(config))
    state = app.state.batchserve
    async with app.router.lifespan_context(app):
        while not state.registry.ready:
            await asyncio.sleep(0.01)
        model = next(iter(state.registry))
        metrics = state.metrics.registry
        per_request = await drive(app, path)
        rows = metrics.get_sample_value("batchserve_batch_size_sum", {"model": model.config.name})
        batches = metrics.get_sample_value("batchserve_batch_size_count", {"model": model.config.name})
    return per_request, (rows or 0) / (batches or 1)


def model_only(batch: int) -> float:
    """CPU per row of the diabetes model's predict_batch on batches of ``batch`` rows."""
    from batchserve.backends.sklearn import SklearnBackend
    from batchserve.config import ModelConfig

    backend = SklearnBackend(ModelConfig(name="d", backend="sklearn", path=harness.demo_artifact("diabetes")))
    backend.load("cpu")
    rows = [backend.preprocess([0.0381, 0.0507, 0.0617, 0.0219, -0.0442, -0.0348, -0.0434, -0.0026,
                                0.0199, -0.0176], None)] * batch
    calls = max(1, REQUESTS // batch)
    started = time.process_time()
    for _ in range(calls):
        backend.predict_batch(rows)
    return (time.process_time() - started) / (calls * batch)


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """``coroutine`` on a fresh uvloop loop, as uvicorn runs the server."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)


def models_toml(directory: Path, backend: str) -> Path:
    artifact = harness.demo_artifact("diabetes")
    path = directory / f"{backend.replace(':', '_')}.toml"
    path.write_text(f'[repository]\nroot = "{artifact.parent}"\n\n[[models]]\nname = "diabetes"\n'
                    f'backend = "{backend}"\npath = "{artifact}"\nmax_batch_size = 64\n'
                    "max_wait_ms = 0\nmax_queue = 4096\n")
    return path


def main() -> None:
    from batchserve import backends

    backends.BUILTIN["constant"] = f"{__name__}:ConstantBackend"
    results: dict[str, list[float]] = {
        "raw": [], "pipeline, fake model": [], "pipeline, diabetes": [], "model only": []}
    batches: list[float] = []
    with tempfile.TemporaryDirectory() as folder:
        fake, real = models_toml(Path(folder), "constant"), models_toml(Path(folder), "sklearn")
        for _ in range(ROUNDS):
            results["raw"].append(run(drive(raw_floor_app.app, "/predict")))
            cost, _ = run(with_app(fake, "/predict"))
            results["pipeline, fake model"].append(cost)
            cost, batch = run(with_app(real, "/predict"))
            results["pipeline, diabetes"].append(cost)
            batches.append(batch)
            results["model only"].append(model_only(max(1, round(batch))))
    median = {name: 1e6 * statistics.median(values) for name, values in results.items()}
    print(f"\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit {harness.commit()}, "
          f"{os.cpu_count()} cores; {REQUESTS} requests, {CONCURRENCY} at a time, {ROUNDS} rounds "
          f"(median); mean batch {statistics.median(batches):.1f}\n")
    print("| layer | CPU us / request |\n|---|---|")
    for name, value in median.items():
        print(f"| {name} | {value:.1f} |")
    own = median["pipeline, fake model"] - median["raw"]
    model = median["pipeline, diabetes"] - median["pipeline, fake model"]
    print(f"\nbatchserve's own (pipeline, fake model - raw): {own:.1f} us; "
          f"the model's (diabetes - fake): {model:.1f} us")
    harness.save_results("hot_path_cost", {"median_us": median, "mean_batch": statistics.median(batches),
                                           "commit": harness.commit()})


if __name__ == "__main__":
    main()
