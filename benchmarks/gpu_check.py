"""One-shot GPU check: resnet50 (JPEGs decoded on the CPU and on the device) and the demo
transformer in float16, server vs in-process, in one unedited run of about 5 minutes.

resnet50, in-process (the backend class the server uses, outputs back on the host so each
timing includes the device sync), at BATCH_SIZES, the best of each kept:

- forward-only: ``predict_batch`` on preprocessed crops (the CPU path's rows);
- end to end: ``predict_batch`` on JPEG bytes (``decode_on = "device"``): one nvJPEG decode of
  the batch, resize, crop, normalise and forward; with the device memory peak per batch size
  (``torch.cuda.max_memory_allocated``, what the server's gauge reports);
- the CPU's rates: JPEG decode + preprocess on the server's cores (a thread pool, as the
  server uses) and the header check a device-decoded JPEG still gets.

Then the servers, with max_batch_size at the end-to-end best, pinned to most of the cores,
batchserve's own load generator (``batchserve_planning``) on the rest, raw JPEG bodies, one
image per request: JPEGs decoded on the device in each of LAYOUTS (worker processes x model
instances: the stream/instance layouts), and on the CPU (the old server). The transformer
as before: in-process best vs the server at one text and TEXTS_PER_REQUEST texts per request,
and at one text with each of TRANSFORMER_WORKERS worker processes (issue 11: 1 vs 8). For each
server, the device memory it holds (every worker's CUDA context, weights and cache: the
device's used memory while it runs, less before it started).
Prints markdown tables and writes JSON to RESULTS_DIR (default benchmarks/results).

Usage: .venv/bin/python benchmarks/gpu_check.py
       .venv/bin/python benchmarks/gpu_check.py --dry-run   (on the CPU, tiny: proves it runs)
Settings are environment variables (the constants below).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
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

DRY_RUN = "--dry-run" in sys.argv[1:]
ROOT = Path(__file__).resolve().parent.parent
DEVICE = os.environ.get("DEVICE", "cpu" if DRY_RUN else "cuda")
DTYPE = os.environ.get("DTYPE", "float16" if DEVICE.startswith("cuda") else "float32")
DURATION_S = float(os.environ.get("DURATION_S", "2" if DRY_RUN else "8"))
WARMUP_S = float(os.environ.get("WARMUP_S", "1" if DRY_RUN else "2"))
BATCH_SIZES = [int(b) for b in
               os.environ.get("BATCH_SIZES", "1,4" if DRY_RUN else "1,8,32,64,128").split(",")]
TEXTS_PER_REQUEST = int(os.environ.get("TEXTS_PER_REQUEST", "4" if DRY_RUN else "16"))
CONNECTIONS = int(os.environ.get("CONNECTIONS", "4" if DRY_RUN else "128"))
"""Connections of the image loads (the transformer's one-text load gets twice as many)."""
LAYOUTS = [tuple(int(n) for n in layout.split("x")) for layout in
           os.environ.get("LAYOUTS", "1x1,1x2,4x1" if not DRY_RUN else "1x1,1x2,2x1").split(",")]
"""Worker processes x instances per model, for the device-decoding server."""
TRANSFORMER_WORKERS = [int(n) for n in
                       os.environ.get("TRANSFORMER_WORKERS", "1,2" if DRY_RUN else "1,8").split(",")]
"""Worker processes for the transformer's one-text load (each its own model copy on the device)."""
PORT = int(os.environ.get("PORT", "8094"))
RESULTS_DIR = Path(os.environ.get("RESULTS_DIR", ROOT / "benchmarks" / "results"))
PHOTOS = Path(os.path.dirname(sklearn.datasets.__file__)) / "images"
JPEGS = ("china.jpg", "flower.jpg")  # 640 x 427 each, as a phone's upload resized
TEXT = "The battery is fine but the screen scratches far too easily " * 6  # ~70 tokens


def cores() -> tuple[str | None, set[int] | None, int]:
    """Server cores (a taskset list), load-generator cores and load processes."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 4 or shutil.which("taskset") is None:
        return None, None, 1
    load = available[-max(2, len(available) // 4):]
    server = available[:len(available) - len(load)]
    return ",".join(map(str, server)), set(load), len(load)


def sample(backend: str) -> list[Any]:
    """Items as the server receives them: JPEG bytes (a raw body), or a text."""
    if backend == "resnet50":
        return [(PHOTOS / name).read_bytes() for name in JPEGS]
    return [TEXT]


def load_model(backend: str, path: Path, **options: Any) -> Any:
    config = ModelConfig(name=backend, backend=backend, path=path, device=DEVICE,
                         max_batch_size=max(BATCH_SIZES), options={"dtype": DTYPE, **options})
    model = backend_class(backend)(config)
    model.load(DEVICE)
    return model


def rates(model: Any, rows: list[Any]) -> dict[str, Any]:
    """predict_batch's rows/s at each batch size, and the device memory peak at each on CUDA."""
    import torch

    cuda = DEVICE.startswith("cuda")
    rows_s, peak_mib = {}, {}
    for size in BATCH_SIZES:
        batch = [rows[n % len(rows)] for n in range(size)]
        model.predict_batch(batch)  # warm-up for this shape
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        runs = max(3 if DRY_RUN else 5, (16 if DRY_RUN else 256) // size)
        started = time.perf_counter()
        for _ in range(runs):
            model.predict_batch(batch)
        rows_s[size] = runs * size / (time.perf_counter() - started)
        if cuda:
            peak_mib[size] = torch.cuda.max_memory_allocated() / 2**20
    return {"rows_s": rows_s, "peak_mib": peak_mib} if cuda else {"rows_s": rows_s}


def in_process(backend: str, path: Path) -> dict[str, Any]:
    if backend != "resnet50":
        model = load_model(backend, path)
        result = rates(model, [model.preprocess(TEXT, model.parse_parameters({}))])
        model.unload()
        return {"forward": result}
    items = sample(backend)
    cpu_decode = load_model(backend, path, decode_on="cpu")
    result = {"forward": rates(cpu_decode, [cpu_decode.preprocess(item, 1) for item in items]),
              "preprocess_img_s": preprocess_rate(cpu_decode, items)}
    cpu_decode.unload()
    device_decode = load_model(backend, path, decode_on="device")
    jpeg_rows = [device_decode.preprocess(item, 1) for item in items]
    assert all(type(row.image).__name__ == "Jpeg" for row in jpeg_rows), "not decoded on the device"
    result["end_to_end"] = rates(device_decode, jpeg_rows)
    result["header_check_img_s"] = header_rate(device_decode, items)
    device_decode.unload()
    return result


@contextlib.contextmanager
def on_server_cores() -> Iterator[int]:
    """This process pinned to the server's cores for the block; yields how many there are."""
    server_cores, _, _ = cores()
    previous = os.sched_getaffinity(0)
    if server_cores:
        os.sched_setaffinity(0, {int(c) for c in server_cores.split(",")})
    try:
        yield len(server_cores.split(",")) if server_cores else os.cpu_count() or 1
    finally:
        os.sched_setaffinity(0, previous)


def preprocess_rate(model: Any, items: list[bytes]) -> float:
    """JPEG decode + ImageNet transform per second on the server's cores, with a thread pool."""
    with on_server_cores() as threads, ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda n: model.preprocess(items[n % len(items)], 1), range(threads)))
        count = threads * (2 if DRY_RUN else 16)
        started = time.perf_counter()
        list(pool.map(lambda n: model.preprocess(items[n % len(items)], 1), range(count)))
        return count / (time.perf_counter() - started)


def header_rate(model: Any, items: list[bytes]) -> float:
    """What a device-decoded JPEG still costs the CPU (its header read and checked), one thread."""
    count = 200 if DRY_RUN else 5000
    started = time.perf_counter()
    for n in range(count):
        model.preprocess(items[n % len(items)], 1)
    return count / (time.perf_counter() - started)


def device_used_mib() -> float | None:
    """Memory in use on the device, every process's (CUDA contexts included), in MiB; ``None``
    on the CPU. This process's cached blocks are released first so that they don't move."""
    if not DEVICE.startswith("cuda"):
        return None
    import torch

    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info()
    return (total - free) / 2**20


def serve(backend: str, path: Path, max_batch_size: int, inputs: Path,
          loads: list[tuple[str, int, int]], *, options: str = "", workers: int = 1,
          instances: int = 1) -> dict[str, dict[str, float]]:
    """Serve the model and run each (label, connections, rows per request) load against it."""
    config = (f'[[models]]\nname = "m"\nbackend = "{backend}"\npath = "{path}"\ndevice = "{DEVICE}"\n'
              f'max_batch_size = {max_batch_size}\nmax_queue = 16384\ntimeout_ms = 60000\n'
              f'instances = {instances}\noptions = {{ dtype = "{DTYPE}"{options} }}\n')
    server_cores, load_cores, processes = cores()
    results = {}
    os.environ["BATCHSERVE_WORKERS"] = str(workers)  # read by the server process it starts
    before = device_used_mib()
    try:
        with harness.batchserve(config, PORT, core=server_cores) as (url, _):
            for label, connections, rows_per_request in loads:
                requests = build_requests(load_samples(inputs), host="127.0.0.1", port=PORT,
                                          model="m", rows_per_request=rows_per_request,
                                          image_mode="raw" if rows_per_request == 1 else "base64")
                spec = LoadSpec("127.0.0.1", PORT, requests.requests, concurrency=connections,
                                duration_s=DURATION_S, warmup_s=WARMUP_S, timeout_s=60)
                summary = measure(spec, url, "m", rows_per_request, processes=processes,
                                  cpus=load_cores, progress=False)
                results[label] = {"rows_s": summary.rows_per_s, "p50_ms": summary.latency_ms["p50"],
                                  "p99_ms": summary.latency_ms["p99"],
                                  "mean_batch": summary.mean_batch_size or 0.0,
                                  "errors": float(summary.error_rate),
                                  "device_peak_mib": harness.metric(
                                      url, "batchserve_device_memory_peak_bytes", "m") / 2**20}
            during = device_used_mib()  # after the loads: every worker's context, weights, cache
            for result in results.values():
                result["server_device_mib"] = (during - before if during is not None
                                               and before is not None else float("nan"))
    finally:
        del os.environ["BATCHSERVE_WORKERS"]
    return results


def best(rows_s: dict[int, float]) -> int:
    return max(rows_s, key=lambda size: rows_s[size])


def resnet50(path: Path, inputs: Path, lines: list[str]) -> dict[str, Any]:
    limit = in_process("resnet50", path)
    batch = best(limit["end_to_end"]["rows_s"])
    end_to_end = limit["end_to_end"]["rows_s"][batch]
    forward = max(limit["forward"]["rows_s"].values())
    image_load = [(f"JPEG body, 1 image/request, {CONNECTIONS} connections", CONNECTIONS, 1)]
    servers: dict[str, Any] = {}
    for workers, instances in LAYOUTS:
        label = f"device decode, {workers} worker(s) x {instances} instance(s)"
        servers[label] = serve("resnet50", path, batch, inputs / "images", image_load,
                               options=', decode_on = "device"', workers=workers,
                               instances=instances)[image_load[0][0]]
    servers["CPU decode (the old server), 1 worker x 1 instance"] = serve(
        "resnet50", path, batch, inputs / "images", image_load,
        options=', decode_on = "cpu"')[image_load[0][0]]
    lines += ["", f"resnet50, in-process: forward-only best {forward:.0f} img/s; JPEG bytes -> device "
              f"decode -> forward best **{end_to_end:.0f} img/s** (batch {batch}); the server's cores "
              f"decode + preprocess {limit['preprocess_img_s']:.0f} JPEGs/s; one core checks "
              f"{limit['header_check_img_s']:.0f} JPEG headers/s", "",
              "| resnet50 server (1 JPEG/request) | img/s | p50 ms | p99 ms | mean batch "
              "| device peak MiB | server's device MiB (all workers) | / end-to-end limit "
              "| / forward-only | / CPU-decode server |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    cpu_server = servers["CPU decode (the old server), 1 worker x 1 instance"]["rows_s"]
    for label, result in servers.items():
        lines.append(f"| {label} | {result['rows_s']:.0f} | {result['p50_ms']:.1f} | "
                     f"{result['p99_ms']:.1f} | {result['mean_batch']:.1f} | "
                     f"{result['device_peak_mib']:.0f} | {result['server_device_mib']:.0f} | "
                     f"{result['rows_s'] / end_to_end:.2f} | "
                     f"{result['rows_s'] / forward:.2f} | {result['rows_s'] / cpu_server:.2f} |")
    if "peak_mib" in limit["end_to_end"]:
        lines += ["", "resnet50 device memory peak by batch (MiB), end to end: " + ", ".join(
            f"{size}: {mib:.0f}" for size, mib in limit["end_to_end"]["peak_mib"].items())]
    return {"in_process": limit, "best_batch": batch, "server": servers}


def transformer(path: Path, inputs: Path, lines: list[str]) -> dict[str, Any]:
    limit = in_process("transformer", path)
    batch = best(limit["forward"]["rows_s"])
    one_text = f"JSON, 1 text/request, {2 * CONNECTIONS} connections"
    served = serve("transformer", path, batch, inputs / "texts.txt", [
        (one_text, 2 * CONNECTIONS, 1),
        (f"JSON, {TEXTS_PER_REQUEST} texts/request, {CONNECTIONS // 2} connections",
         max(1, CONNECTIONS // 2), TEXTS_PER_REQUEST)])
    for workers in TRANSFORMER_WORKERS[1:]:  # one text per request is what one event loop caps
        served[f"{one_text}, {workers} workers"] = serve(
            "transformer", path, batch, inputs / "texts.txt", [(one_text, 2 * CONNECTIONS, 1)],
            workers=workers)[one_text]
    rate = limit["forward"]["rows_s"][batch]
    lines += ["", "| transformer load | in-process best rows/s (batch) | server rows/s | p50 ms "
              "| p99 ms | mean batch | server's device MiB (all workers) | server / in-process |",
              "|---|---|---|---|---|---|---|---|"]
    for label, result in served.items():
        lines.append(f"| {label} | {rate:.0f} ({batch}) | {result['rows_s']:.0f} | "
                     f"{result['p50_ms']:.1f} | {result['p99_ms']:.1f} | {result['mean_batch']:.1f} "
                     f"| {result['server_device_mib']:.0f} | {result['rows_s'] / rate:.2f} |")
    return {"in_process": limit, "best_batch": batch, "server": served}


def main() -> None:
    import torch

    if DEVICE.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA GPU visible to torch; run with --dry-run for a CPU dry run")
    gpu = torch.cuda.get_device_name(0) if DEVICE.startswith("cuda") else platform.processor() or "cpu"
    server_cores, load_cores, processes = cores()
    started = time.monotonic()
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": harness.commit(),
        "device": f"{DEVICE} ({gpu})", "dtype": DTYPE, "torch": torch.__version__,
        "cpus": os.cpu_count(), "server_cores": server_cores, "dry_run": DRY_RUN,
        "load_cores": sorted(load_cores) if load_cores else None, "load_processes": processes}
    inputs = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    (inputs / "images").mkdir(parents=True, exist_ok=True)
    for name in JPEGS:
        shutil.copy(PHOTOS / name, inputs / "images" / name)
    (inputs / "texts.txt").write_text(TEXT + "\n")
    lines: list[str] = []
    for backend, run in (("resnet50", resnet50), ("transformer", transformer)):
        try:  # one run is all there is: a failure in one model must not lose the other's figures
            report[backend] = run(harness.demo_artifact(backend), inputs, lines)
        except Exception as exc:
            traceback.print_exc()
            report[backend] = {"error": repr(exc)}
            lines += ["", f"{backend}: failed: {exc!r}"]
        print(json.dumps({backend: report[backend]}), flush=True)
    report["wall_s"] = time.monotonic() - started
    print(f"\n{report['date']}, commit {report['commit']}, {report['device']}, {DTYPE}, torch "
          f"{report['torch']}, {report['cpus']} CPUs (server on {server_cores}, load on "
          f"{report['load_cores']}), {report['wall_s']:.0f} s{', DRY RUN' if DRY_RUN else ''}")
    print("\n".join(lines))
    harness.save_results("gpu_check_dry_run" if DRY_RUN else "gpu_check", report, RESULTS_DIR)


if __name__ == "__main__":
    main()
