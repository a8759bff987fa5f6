"""Gradient-boosted trees: batchserve against the library's in-process predict and the HTTP floor.

Models: the demo XGBoost classifier (models/build_xgboost.py: 50 trees of depth 3 on the
breast-cancer data, 30 features) and a LightGBM classifier trained here on the same data
(50 trees of up to 7 leaves). In-process: the library's own predict on the same file, one
thread on the server's core, at batch sizes 1 to 256; the best is the trees' limit. HTTP
floor: the bare FastAPI endpoint (benchmarks/floor_app.py) parsing the same bodies. Server:
one row per request, CONNECTIONS wrk connections, pinned to one core with wrk on the other,
batching on (max_batch_size 64) and off (1). All in one run, ~2 minutes.

Usage: .venv/bin/python benchmarks/trees_bench.py   (needs wrk)
Prints a markdown table and writes benchmarks/results/trees_bench-<time>.json.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import harness
import numpy as np

SERVER_CORE = os.environ.get("SERVER_CORE", "0")
LOAD_CORE = os.environ.get("LOAD_CORE", "1")
CONNECTIONS = int(os.environ.get("CONNECTIONS", "64"))
DURATION_S = float(os.environ.get("DURATION_S", "8"))
WARMUP_S = float(os.environ.get("WARMUP_S", "2"))
PORT = int(os.environ.get("PORT", "8093"))
BATCH_SIZES = (1, 4, 16, 64, 256)
IN_PROCESS_S = 0.5
"""Seconds of repeated predicts per batch size, after a burn-in."""


def xgboost_model(folder: Path) -> Path:
    """The demo model, built by models/build_xgboost.py into ``folder``."""
    import importlib.util

    script = harness.ROOT / "models" / "build_xgboost.py"
    spec = importlib.util.spec_from_file_location("build_xgboost", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    built: Path = module.build(folder / "cancer.json")
    return built


def lightgbm_model(folder: Path) -> Path:
    import lightgbm
    from sklearn.datasets import load_breast_cancer

    features, target = load_breast_cancer(return_X_y=True)
    params = {"objective": "binary", "num_leaves": 7, "num_threads": 1, "seed": 0, "verbose": -1}
    path = folder / "cancer-lgb.txt"
    lightgbm.train(params, lightgbm.Dataset(features, label=target), num_boost_round=50).save_model(str(path))
    return path


def predictor(backend: str, path: Path) -> Callable[[np.ndarray[Any, Any]], Any]:
    """The library's own predict on ``path``, one thread."""
    if backend == "xgboost":
        import xgboost

        booster = xgboost.Booster(model_file=str(path))
        booster.set_param({"nthread": 1})
        return lambda rows: booster.inplace_predict(rows)
    import lightgbm

    lgb = lightgbm.Booster(model_file=str(path))
    return lambda rows: lgb.predict(rows, num_threads=1)


def in_process(backend: str, path: Path, rows: np.ndarray[Any, Any]) -> dict[int, float]:
    """rows/s of the library's predict per batch size, on the server's core."""
    predict = predictor(backend, path)
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, harness.cores(SERVER_CORE) or before)
    try:
        results = {}
        for size in BATCH_SIZES:
            batch = np.ascontiguousarray(np.resize(rows, (size, rows.shape[1])))
            for _ in range(20):
                predict(batch)  # burn-in
            calls, started = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - started) < IN_PROCESS_S:
                predict(batch)
                calls += 1
            results[size] = calls * size / elapsed
        return results
    finally:
        os.sched_setaffinity(0, before)


def bodies(folder: Path, model: str, rows: np.ndarray[Any, Any]) -> Path:
    path = folder / f"{model}.bodies"
    path.write_text("".join(json.dumps({"model": model, "inputs": [row.tolist()]}) + "\n" for row in rows))
    return path


def measure(url: str, body_file: Path, model: str | None) -> dict[str, float]:
    return harness.measured_wrk(f"{url}/predict", warmup_s=WARMUP_S, duration_s=DURATION_S,
                                connections=CONNECTIONS, script="bodies.lua", model=model,
                                core=LOAD_CORE, env={**os.environ, "BODIES": str(body_file)})


def serve(name: str, backend: str, path: Path, max_batch_size: int, body_file: Path) -> dict[str, float]:
    config = (f'[[models]]\nname = "{name}"\nbackend = "{backend}"\npath = "{path}"\n'
              f"max_batch_size = {max_batch_size}\nmax_wait_ms = 0\nmax_queue = 4096\n")
    with harness.batchserve(config, PORT, core=SERVER_CORE) as (url, _):
        return measure(url, body_file, name)


def floor(body_file: Path) -> dict[str, float]:
    command = [sys.executable, "-m", "uvicorn", "benchmarks.floor_app:app", "--port", str(PORT),
               "--log-level", "warning", "--no-access-log", "--loop", "uvloop", "--http", "httptools"]
    with harness.process(command, f"http://127.0.0.1:{PORT}/docs", core=SERVER_CORE):
        return measure(f"http://127.0.0.1:{PORT}", body_file, None)


def main() -> None:
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    from sklearn.datasets import load_breast_cancer

    rows = load_breast_cancer().data[:64]
    summary: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": harness.commit(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "settings": {"connections": CONNECTIONS, "duration_s": DURATION_S, "server_core": SERVER_CORE,
                     "load_core": LOAD_CORE}, "models": {}}
    with tempfile.TemporaryDirectory() as directory:
        folder = Path(directory)
        models = {"cancer": ("xgboost", xgboost_model(folder)),
                  "cancer-lgb": ("lightgbm", lightgbm_model(folder))}
        floor_result = floor(bodies(folder, "cancer", rows))
        summary["floor"] = floor_result
        for name, (backend, path) in models.items():
            body_file = bodies(folder, name, rows)
            limit = in_process(backend, path, rows)
            on = serve(name, backend, path, 64, body_file)
            off = serve(name, backend, path, 1, body_file)
            version = importlib.import_module(backend).__version__
            summary["models"][name] = {"backend": backend, "version": version,
                                       "in_process": limit, "batching_on": on, "batching_off": off}
    print(f"\n{summary['date']}, commit {summary['commit']}, {summary['machine']}; server on core "
          f"{SERVER_CORE}, wrk (-t1, {CONNECTIONS} connections, one row per request) on core "
          f"{LOAD_CORE}, {WARMUP_S:g} s warm-up + {DURATION_S:g} s\n")
    print(f"HTTP floor (bare FastAPI, same bodies): {floor_result['rps']:,.0f} req/s, "
          f"p50 {floor_result['p50_ms']:.2f} ms, p99 {floor_result['p99_ms']:.2f} ms\n")
    print("| model | in-process rows/s by batch size | best | server, batching on (mean batch) | "
          "off | on / in-process | on / floor | on / off |")
    print("|---|---|---|---|---|---|---|---|")
    for name, result in summary["models"].items():
        limit = result["in_process"]
        best = max(limit.values())
        on, off = result["batching_on"], result["batching_off"]
        sizes = ", ".join(f"{size}: {rate:,.0f}" for size, rate in limit.items())
        ceiling = min(best, floor_result["rps"])
        result["limit"] = "trees" if best < floor_result["rps"] else "HTTP"
        result["ratio_in_process"] = on["rps"] / best
        result["ratio_floor"] = on["rps"] / floor_result["rps"]
        result["ratio_limit"] = on["rps"] / ceiling
        print(f"| {name} ({result['backend']} {result['version']}) | {sizes} | {best:,.0f} | "
              f"{on['rps']:,.0f} ({on['mean_batch']:.1f}; p99 {on['p99_ms']:.1f} ms) | "
              f"{off['rps']:,.0f} (p99 {off['p99_ms']:.1f} ms) | {result['ratio_in_process']:.3f} | "
              f"{result['ratio_floor']:.2f} | {on['rps'] / off['rps']:.2f} |")
        print(f"  limit: {result['limit']}; server / min(in-process, floor) = {result['ratio_limit']:.2f}; "
              f"errors {on['non_2xx'] + off['non_2xx']:.0f} non-2xx, "
              f"{on['timeouts'] + off['timeouts']:.0f} timeouts")
    print(f"wrote {harness.save_results('trees_bench', summary)}")


if __name__ == "__main__":
    main()
