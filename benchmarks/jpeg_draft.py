"""resnet50 JPEG decoding: ``options.decode = "draft"`` (libjpeg's DCT scaling) vs ``"full"``.

For sklearn's two photos (640 x 427) and a large photo made from them (the two tiled 2 x 2 and
upscaled to 4000 x 2668, JPEG quality 90), on one thread: the backend's decode + preprocess
speed (images/s) with each mode, in alternating rounds, and the ratio draft / full of the same
run; and what draft changes: the max abs difference of the model's input tensor (normalized, as
predict_batch builds it) and of the 1000 softmax outputs with the demo weights, and whether top-1
agrees. Usage: .venv/bin/python benchmarks/jpeg_draft.py (about a minute on 2 cores).
"""

from __future__ import annotations

import io
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import sklearn.datasets
import torch
from batchserve.backends.images import IMAGENET_MEAN, IMAGENET_STD
from batchserve.backends.resnet50 import ResNet50Backend
from batchserve.config import ModelConfig
from batchserve.errors import RowError
from harness import commit, demo_artifact, save_results
from PIL import Image

ROUNDS = 5  # alternating draft / full rounds per photo; the median round counts
ROUND_S = 1.0  # each round decodes for at least this long
LARGE_SIZE = (4000, 2668)
PHOTOS = Path(os.path.dirname(sklearn.datasets.__file__)) / "images"


def large_photo() -> bytes:
    china, flower = (Image.open(PHOTOS / n).convert("RGB") for n in ("china.jpg", "flower.jpg"))
    tiled = Image.new("RGB", (2 * china.width, 2 * china.height))
    for box, photo in (((0, 0), china), ((china.width, 0), flower),
                       ((0, china.height), flower), ((china.width, china.height), china)):
        tiled.paste(photo, box)
    buffer = io.BytesIO()
    tiled.resize(LARGE_SIZE, Image.Resampling.BICUBIC).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def backend(decode: str, weights: Path) -> ResNet50Backend:
    model = ResNet50Backend(ModelConfig(name=decode, backend="resnet50", path=weights,
                                        options={"decode": decode, "top_k": 1000,
                                                 "torch_threads": 1}))
    model.load("cpu")
    return model


def images_per_s(model: ResNet50Backend, jpeg: bytes) -> float:
    count, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < ROUND_S:
        model.preprocess(jpeg, 1)
        count += 1
    return count / elapsed


def model_input(model: ResNet50Backend, jpeg: bytes) -> torch.Tensor:
    crop = model.preprocess(jpeg, 1).image
    assert isinstance(crop, torch.Tensor), "a CPU model's rows are crops"
    pixels = crop.permute(2, 0, 1).float().div(255)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (pixels - mean) / std


def softmax(model: ResNet50Backend, jpeg: bytes) -> torch.Tensor:
    [output] = model.predict_batch([model.preprocess(jpeg, 1000)])
    assert not isinstance(output, RowError), output
    return torch.tensor([c["probability"] for c in sorted(output, key=lambda c: c["index"])])


def cpu_model() -> str:
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        names = [line.partition(":")[2].strip() for line in cpuinfo if line.startswith("model name")]
    return names[0] if names else platform.machine()


def main() -> None:
    weights = demo_artifact("resnet50")
    draft, full = backend("draft", weights), backend("full", weights)
    photos = {name: (PHOTOS / name).read_bytes() for name in ("china.jpg", "flower.jpg")}
    photos[f"large {LARGE_SIZE[0]}x{LARGE_SIZE[1]}"] = large_photo()
    results: list[dict[str, Any]] = []
    print(f"{os.cpu_count()} cores, {cpu_model()}, commit {commit()}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("| photo | size | KB | full img/s | draft img/s | draft / full | input max / mean abs diff "
          "| softmax max abs diff | top-1 agrees |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, jpeg in photos.items():
        for model in (draft, full):  # burn-in
            model.preprocess(jpeg, 1)
        rates: dict[str, list[float]] = {"draft": [], "full": []}
        for _ in range(ROUNDS):
            rates["draft"].append(images_per_s(draft, jpeg))
            rates["full"].append(images_per_s(full, jpeg))
        draft_rate, full_rate = statistics.median(rates["draft"]), statistics.median(rates["full"])
        input_diff = (model_input(draft, jpeg) - model_input(full, jpeg)).abs()
        p_draft, p_full = softmax(draft, jpeg), softmax(full, jpeg)
        width, height = Image.open(io.BytesIO(jpeg)).size
        row: dict[str, Any] = {
            "photo": name, "size": [width, height], "bytes": len(jpeg),
            "full_per_s": full_rate, "draft_per_s": draft_rate, "ratio": draft_rate / full_rate,
            "input_max_abs_diff": float(input_diff.max()),
            "input_mean_abs_diff": float(input_diff.mean()),
            "softmax_max_abs_diff": float((p_draft - p_full).abs().max()),
            "top1_agrees": int(p_draft.argmax()) == int(p_full.argmax()),
        }
        results.append(row)
        print(f"| {name} | {width}x{height} | {len(jpeg) // 1000} | {full_rate:.1f} | "
              f"{draft_rate:.1f} | {row['ratio']:.2f} | {row['input_max_abs_diff']:.3f} / "
              f"{row['input_mean_abs_diff']:.4f} | "
              f"{row['softmax_max_abs_diff']:.4f} | {row['top1_agrees']} |")
    print(f"results: {save_results('jpeg_draft', {'commit': commit(), 'rows': results})}")


if __name__ == "__main__":
    main()
