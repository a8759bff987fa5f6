"""ResNet50 on CPU: batchserve against the in-process pipeline, and batching on vs off.

In-process limit: decode + standard transform + forward (channels_last, float32)
over the two photos that ship with scikit-learn, at batch sizes 1/4/8/16, before
and after the server runs (their mean, as the machine drifts); the best is the
limit. Server: 16 concurrent wrk connections POSTing the same JPEGs
as raw bodies, with max_batch_size 8 (batching on) and 1 (off). All in one run.

Usage: .venv/bin/python benchmarks/resnet50_bench.py   (needs wrk; ~4 minutes)
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import harness
import sklearn.datasets

ROOT = Path(__file__).resolve().parent.parent
IMAGES_DIR = Path(os.path.dirname(sklearn.datasets.__file__)) / "images"
PHOTOS = [IMAGES_DIR / "china.jpg", IMAGES_DIR / "flower.jpg"]
THREADS = int(os.environ.get("THREADS", "2"))
CONNECTIONS = int(os.environ.get("CONNECTIONS", "16"))
DURATION_S = int(os.environ.get("DURATION_S", "20"))
WARMUP_S = int(os.environ.get("WARMUP_S", "5"))
IMAGES_PER_SIZE = int(os.environ.get("IMAGES_PER_SIZE", "64"))
PORT = int(os.environ.get("PORT", "8092"))


def in_process(weights: Path) -> dict[int, float]:
    """img/s of decode + preprocess + forward, per batch size."""
    import io

    import torch
    from PIL import Image
    from safetensors.torch import load_file
    from torchvision import transforms
    from torchvision.models import resnet50

    torch.set_num_threads(THREADS)
    model = resnet50(weights=None)
    model.load_state_dict(load_file(str(weights)))
    model = model.eval().to(memory_format=torch.channels_last)
    transform = transforms.Compose([
        transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    jpegs = [p.read_bytes() for p in PHOTOS]
    results = {}
    for size in (1, 4, 8, 16):
        def run(count: int, size: int = size) -> None:
            for start in range(0, count, size):
                batch = torch.stack([
                    transform(Image.open(io.BytesIO(jpegs[i % 2])).convert("RGB"))
                    for i in range(start, start + size)])
                with torch.inference_mode():
                    model(batch.contiguous(memory_format=torch.channels_last)).softmax(dim=1)
        run(size * 2)  # burn-in
        started = time.perf_counter()
        run(IMAGES_PER_SIZE)
        results[size] = IMAGES_PER_SIZE / (time.perf_counter() - started)
    return results


def serve(weights: Path, max_batch_size: int) -> dict[str, Any]:
    config = (f'[[models]]\nname = "resnet50"\nbackend = "resnet50"\npath = "{weights}"\n'
              f"max_batch_size = {max_batch_size}\nmax_queue = 1024\ntimeout_ms = 60000\n"
              f"options = {{ torch_threads = {THREADS} }}\n")
    env = {**os.environ, "IMAGES": ":".join(str(p) for p in PHOTOS)}
    with harness.batchserve(config, PORT) as (url, _):
        result = harness.measured_wrk(f"{url}/predict/resnet50", warmup_s=WARMUP_S, duration_s=DURATION_S,
                                      connections=CONNECTIONS, script="upload.lua", model="resnet50",
                                      env=env)
    return {"img_s": result["rps"], "p50_ms": result["p50_ms"], "p99_ms": result["p99_ms"],
            "mean_batch": result["mean_batch"], "non_2xx": int(result["non_2xx"])}


def main() -> None:
    weights = harness.demo_artifact("resnet50")
    before = in_process(weights)
    on = serve(weights, 8)
    off = serve(weights, 1)
    after = in_process(weights)  # again: the machine drifts; the limit is the mean of both
    limit = {size: (before[size] + after[size]) / 2 for size in before}
    best_size = max(limit, key=lambda size: limit[size])
    commit = harness.commit()
    print(f"\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit {commit}, "
          f"{os.cpu_count()} cores, torch threads {THREADS}\n")
    print("| in-process pipeline batch | " + " | ".join(str(s) for s in limit) + " |")
    print("|---|" + "---|" * len(limit))
    print("| img/s | " + " | ".join(f"{v:.1f}" for v in limit.values()) + " |\n")
    print(f"| server ({CONNECTIONS} clients, raw JPEG) | img/s | p50 | p99 | mean batch | non-2xx | "
          "vs in-process best |")
    print("|---|---|---|---|---|---|---|")
    for label, result in (("batching on (max_batch_size 8)", on), ("batching off (max_batch_size 1)", off)):
        print(f"| {label} | {result['img_s']:.1f} | {result['p50_ms']:.0f} ms | {result['p99_ms']:.0f} ms | "
              f"{result['mean_batch']:.1f} | {result['non_2xx']} | "
              f"{result['img_s'] / limit[best_size]:.2f} |")
    print(f"\nin-process best: {limit[best_size]:.1f} img/s at batch {best_size}; "
          f"batching on / off = {on['img_s'] / off['img_s']:.2f}")
    harness.save_results("resnet50", {
        "commit": commit, "in_process": limit, "in_process_before": before, "in_process_after": after,
        "batching_on": on, "batching_off": off})


if __name__ == "__main__":
    main()
