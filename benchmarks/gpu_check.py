"""One-shot GPU check: resnet50 and the demo transformer in float16, server vs in-process.

For each model: load the backend in-process on the GPU (the same class the server uses) and
time predict_batch on preprocessed rows at several batch sizes (outputs come back to the host,
so each timing includes the device sync); keep the best. Then serve the model with that
max_batch_size, the server pinned to most of the cores and batchserve's own load generator
(``batchserve_planning``) to the rest, and measure rows/s, p50/p99 and the mean batch:
resnet50 with raw JPEG bodies (one image per request), the transformer with one text per
request and with TEXTS_PER_REQUEST texts per request. For resnet50 it also measures how fast
the server's cores decode and preprocess JPEGs (a thread pool, as the server uses), the
ceiling the CPU puts on a server fed JPEGs. Prints a markdown table and writes JSON to
RESULTS_DIR (default benchmarks/results). About 2 minutes on an H100 machine; one run is enough.

Usage: .venv/bin/python benchmarks/gpu_check.py   (DEVICE=cpu DURATION_S=3 BATCH_SIZES=1,8 for a dry run)
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import harness
import sklearn.datasets
from batchserve.backends import backend_class
from batchserve.config import ModelConfig
from batchserve_planning.load.inputs import build_requests, load_samples
from batchserve_planning.load.measure import measure
from batchserve_planning.load.shared import LoadSpec

ROOT = Path(__file__).resolve().parent.parent
DEVICE = os.environ.get("DEVICE", "cuda")
DTYPE = os.environ.get("DTYPE", "float16" if DEVICE.startswith("cuda") else "float32")
DURATION_S = float(os.environ.get("DURATION_S", "8"))
WARMUP_S = float(os.environ.get("WARMUP_S", "2"))
BATCH_SIZES = [int(b) for b in os.environ.get("BATCH_SIZES", "1,8,32,64,128").split(",")]
TEXTS_PER_REQUEST = int(os.environ.get("TEXTS_PER_REQUEST", "16"))
PORT = int(os.environ.get("PORT", "8094"))
RESULTS_DIR = Path(os.environ.get("RESULTS_DIR", ROOT / "benchmarks" / "results"))
PHOTOS = Path(os.path.dirname(sklearn.datasets.__file__)) / "images"
TEXT = "The battery is fine but the screen scratches far too easily " * 6  # ~70 tokens


def cores() -> tuple[str | None, set[int] | None, int]:
    """Server cores (a taskset list), load-generator cores and load processes."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 4 or shutil.which("taskset") is None:
        return None, None, 1
    load = available[-max(2, len(available) // 4):]
    server = available[:len(available) - len(load)]
    return ",".join(map(str, server)), set(load), len(load)


def sample(backend: str) -> Any:
    """One item as JSON would carry it."""
    if backend == "resnet50":
        import base64

        return base64.b64encode((PHOTOS / "china.jpg").read_bytes()).decode()
    return TEXT


def in_process(backend: str, path: Path) -> dict[str, Any]:
    import torch

    config = ModelConfig(name=backend, backend=backend, path=path, device=DEVICE,
                         max_batch_size=max(BATCH_SIZES), options={"dtype": DTYPE})
    model = backend_class(backend)(config)
    model.load(DEVICE)
    parameters = model.parse_parameters({})
    row = model.preprocess(sample(backend), parameters)
    rows_s = {}
    for size in BATCH_SIZES:
        batch = [row] * size
        model.predict_batch(batch)  # warm-up for this shape
        runs = max(5, 256 // size)
        started = time.perf_counter()
        for _ in range(runs):
            model.predict_batch(batch)
        rows_s[size] = runs * size / (time.perf_counter() - started)
    result: dict[str, Any] = {"rows_s": rows_s}
    if DEVICE.startswith("cuda"):
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    if backend == "resnet50":
        result["preprocess_img_s"] = preprocess_rate(model, parameters)
    model.unload()
    return result


def preprocess_rate(model: Any, parameters: Any) -> float:
    """JPEG decode + ImageNet transform per second on the server's cores, with a thread pool."""
    server_cores, _, _ = cores()
    threads = len(server_cores.split(",")) if server_cores else os.cpu_count() or 1
    item = sample("resnet50")
    previous = os.sched_getaffinity(0)
    if server_cores:
        os.sched_setaffinity(0, {int(c) for c in server_cores.split(",")})
    try:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda _: model.preprocess(item, parameters), range(threads)))
            count = threads * 16
            started = time.perf_counter()
            list(pool.map(lambda _: model.preprocess(item, parameters), range(count)))
            return count / (time.perf_counter() - started)
    finally:
        os.sched_setaffinity(0, previous)


def serve(backend: str, path: Path, max_batch_size: int, inputs: Path,
          loads: list[tuple[str, int, int]]) -> dict[str, dict[str, float]]:
    """Serve the model and run each (label, connections, rows per request) load against it."""
    config = (f'[[models]]\nname = "m"\nbackend = "{backend}"\npath = "{path}"\ndevice = "{DEVICE}"\n'
              f'max_batch_size = {max_batch_size}\nmax_queue = 16384\ntimeout_ms = 60000\n'
              f'options = {{ dtype = "{DTYPE}" }}\n')
    server_cores, load_cores, processes = cores()
    results = {}
    with harness.batchserve(config, PORT, core=server_cores) as (url, _):
        for label, connections, rows_per_request in loads:
            requests = build_requests(load_samples(inputs), host="127.0.0.1", port=PORT, model="m",
                                      rows_per_request=rows_per_request, image_mode="raw")
            spec = LoadSpec("127.0.0.1", PORT, requests.requests, concurrency=connections,
                            duration_s=DURATION_S, warmup_s=WARMUP_S, timeout_s=60)
            summary = measure(spec, url, "m", rows_per_request, processes=processes, cpus=load_cores,
                              progress=False)
            results[label] = {"rows_s": summary.rows_per_s, "p50_ms": summary.latency_ms["p50"],
                              "p99_ms": summary.latency_ms["p99"],
                              "mean_batch": summary.mean_batch_size or 0.0,
                              "errors": float(summary.error_rate)}
    return results


def main() -> None:
    import torch

    if DEVICE.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA GPU visible to torch; run with DEVICE=cpu for a dry run")
    gpu = torch.cuda.get_device_name(0) if DEVICE.startswith("cuda") else platform.processor() or "cpu"
    server_cores, load_cores, processes = cores()
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": harness.commit(),
        "device": f"{DEVICE} ({gpu})", "dtype": DTYPE, "torch": torch.__version__,
        "cpus": os.cpu_count(), "server_cores": server_cores,
        "load_cores": sorted(load_cores) if load_cores else None, "load_processes": processes}
    inputs = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    (inputs / "images").mkdir(parents=True, exist_ok=True)
    shutil.copy(PHOTOS / "china.jpg", inputs / "images" / "china.jpg")
    (inputs / "texts.txt").write_text(TEXT + "\n")
    plans = {
        "resnet50": (inputs / "images", [("JPEG body, 1 image/request, 128 connections", 128, 1)]),
        "transformer": (inputs / "texts.txt", [
            ("JSON, 1 text/request, 256 connections", 256, 1),
            (f"JSON, {TEXTS_PER_REQUEST} texts/request, 64 connections", 64, TEXTS_PER_REQUEST)]),
    }
    lines = ["| model | load | in-process best rows/s (batch) | server rows/s | p50 ms | p99 ms "
             "| mean batch | server / in-process |", "|---|---|---|---|---|---|---|---|"]
    for backend, (samples, loads) in plans.items():
        try:  # one run is all there is: a failure in one model must not lose the other's figures
            path = harness.demo_artifact(backend)
            limit = in_process(backend, path)
            best = max(limit["rows_s"], key=lambda size: limit["rows_s"][size])
            served = serve(backend, path, best, samples, loads)
        except Exception as exc:
            traceback.print_exc()
            report[backend] = {"error": repr(exc)}
            lines.append(f"| {backend} | failed: {exc!r} | | | | | | |")
            continue
        report[backend] = {"in_process": limit, "best_batch": best, "server": served}
        for label, result in served.items():
            lines.append(f"| {backend} | {label} | {limit['rows_s'][best]:.0f} ({best}) | "
                         f"{result['rows_s']:.0f} | {result['p50_ms']:.1f} | {result['p99_ms']:.1f} | "
                         f"{result['mean_batch']:.1f} | {result['rows_s'] / limit['rows_s'][best]:.2f} |")
        print(json.dumps({backend: report[backend]}), flush=True)
    print(f"\n{report['date']}, commit {report['commit']}, {report['device']}, {DTYPE}, torch "
          f"{report['torch']}, {report['cpus']} CPUs (server on {server_cores}, load on "
          f"{report['load_cores']})\n")
    print("\n".join(lines))
    if "in_process" in report["resnet50"]:
        print(f"\nresnet50: the server's cores decode + preprocess "
              f"{report['resnet50']['in_process']['preprocess_img_s']:.0f} JPEGs/s")
    harness.save_results("gpu_check", report, RESULTS_DIR)


if __name__ == "__main__":
    main()
