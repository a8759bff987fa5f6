"""In-process, same threads: ONNX Runtime against torch eager for the demo models (resnet50, the
transformer classifier, all-MiniLM-L6-v2), float32 and int8: throughput and drift.

Each model is exported with ``batchserve export`` (float32, and ``--quantize int8``: dynamic per
channel for the text models, static calibrated on the photos for resnet50) into a temporary
folder and loaded by its ONNX backend; torch runs the model's own backend (float32 and, for the
text models, its dynamic int8 ``quantize``). Every variant gets THREADS threads
(``torch_threads`` / ``intra_op_threads``) and runs ``predict_batch`` over the same preprocessed
rows in batches of the model's BATCH (text: tokenising, grouping and pooling included, as the
server does; images: the decoded crops, decoding being the same for both). The variants
alternate, ROUNDS times; each round's rate is divided by torch float32's of the same round, and
the median ratio is reported with the range over the rounds. Drift is against torch float32 on
the same inputs (``batchserve/drift.py``): top-1 agreement and largest probability shift for the
classifiers, cosine for the embedder.

Usage: .venv/bin/python benchmarks/onnx_runtime.py   (settings by environment: THREADS, ROUNDS,
  TEXTS, IMAGE_BATCH, TEXT_BATCH, MODELS=resnet50,sentiment,minilm)
Prints markdown tables, with the machine, date and commit.
"""

from __future__ import annotations

import io
import os
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import harness
import skimage.data
from batchserve.backends import backend_class
from batchserve.config import ModelConfig
from batchserve.drift import drift
from batchserve.onnx_export import export
from embedding_texts import benchmark_texts
from PIL import Image

THREADS = int(os.environ.get("THREADS", "1"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
TEXTS = int(os.environ.get("TEXTS", "96"))
IMAGE_BATCH = int(os.environ.get("IMAGE_BATCH", "8"))
TEXT_BATCH = int(os.environ.get("TEXT_BATCH", "32"))
MODELS = os.environ.get("MODELS", "resnet50,sentiment,minilm").split(",")
SOURCES = {"resnet50": ("resnet50", "resnet50", {}),
           "sentiment": ("transformer", "transformer", {"max_length": 128}),
           "minilm": ("minilm", "embedding", {})}
"""Model -> (demo artifact, torch backend, options)."""


def photos(count: int) -> list[bytes]:
    names = ["astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field"]
    found = []
    for index in range(count):
        buffer = io.BytesIO()
        Image.fromarray(getattr(skimage.data, names[index % len(names)])()).convert("RGB").save(
            buffer, format="JPEG", quality=85 + index % 10)
        found.append(buffer.getvalue())
    return found


def variant(backend: str, path: Path, batch: int, options: dict[str, Any]) -> Any:
    threads = {"torch_threads": THREADS} if backend in ("resnet50", "transformer", "embedding") \
        else {"intra_op_threads": THREADS}
    config = ModelConfig(name=backend, backend=backend, path=path, max_batch_size=batch,
                         options={**options, **threads})
    instance = backend_class(backend)(config)
    instance.load("cpu")
    instance.warmup()
    return instance


def rows(backend: Any, items: list[Any]) -> list[Any]:
    parameters = backend.parse_parameters({"top_k": 1000} if hasattr(backend, "default_top_k") else {})
    return [backend.preprocess(item, parameters) for item in items]


def run(backend: Any, prepared: list[Any], batch: int) -> tuple[list[Any], float]:
    started = time.perf_counter()
    outputs = [output for start in range(0, len(prepared), batch)
               for output in backend.predict_batch(prepared[start:start + batch])]
    return outputs, len(prepared) / (time.perf_counter() - started)


def measure(model: str, scratch: Path) -> list[str]:
    artifact, torch_backend, options = SOURCES[model]
    source = ModelConfig(name=model, backend=torch_backend, path=harness.demo_artifact(artifact),
                         options=options)
    image = model == "resnet50"
    items: list[Any] = photos(2 * IMAGE_BATCH) if image else benchmark_texts(TEXTS)
    batch = IMAGE_BATCH if image else TEXT_BATCH
    onnx_backend = {"resnet50": "onnx-image", "sentiment": "onnx-classifier",
                    "minilm": "onnx-embedding"}[model]
    variants = {"torch float32": variant(torch_backend, source.path, batch, options)}
    if not image:
        variants["torch int8 (dynamic)"] = variant(torch_backend, source.path, batch,
                                                   {**options, "quantize": "int8"})
    keep = {"max_length": 128} if model == "sentiment" else {}
    for precision in ("none", "int8"):
        folder = scratch / f"{model}-{precision}"
        export(source, folder, quantize=precision, items=items[:8] if image else None)
        label = "onnxruntime float32" if precision == "none" else (
            "onnxruntime int8 (static)" if image else "onnxruntime int8 (dynamic)")
        variants[label] = variant(onnx_backend, folder, batch, keep)
    # Loading a torch backend sets torch's threads for the whole process, and the export's own
    # load set them to every core: set them back, or torch would run on more threads than ORT.
    import torch

    torch.set_num_threads(THREADS)
    prepared = {name: rows(backend, items) for name, backend in variants.items()}
    ratios: dict[str, list[float]] = {name: [] for name in variants}
    rates: dict[str, list[float]] = {name: [] for name in variants}
    outputs: dict[str, list[Any]] = {}
    for _ in range(ROUNDS):
        this_round = {}
        for name, backend in variants.items():
            outputs[name], this_round[name] = run(backend, prepared[name], batch)
            rates[name].append(this_round[name])
        for name in variants:
            ratios[name].append(this_round[name] / this_round["torch float32"])
    kind = "embedding" if model == "minilm" else "classifier"
    unit = "images/s" if image else "texts/s"
    lines = [f"**{model}** ({len(items)} {'photos' if image else 'texts'}, batches of {batch}, "
             f"{THREADS} thread(s); torch's: {torch.get_num_threads()})", "",
             f"| runtime, precision | {unit} (median) | vs torch float32: median (range) "
             "| drift vs torch float32 |",
             "|---|---|---|---|"]
    for name in variants:
        measured = drift(kind, outputs["torch float32"], outputs[name])
        shown = ", ".join(f"{key} {value:.4g}" for key, value in measured.items())
        lines.append(f"| {name} | {statistics.median(rates[name]):.1f} | "
                     f"{statistics.median(ratios[name]):.2f}x "
                     f"({min(ratios[name]):.2f}-{max(ratios[name]):.2f}) "
                     f"| {'reference' if name == 'torch float32' else shown} |")
    return [*lines, ""]


def main() -> None:
    print(f"{platform.node()}, {os.cpu_count()} CPUs, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
          f"commit {harness.commit()}; {ROUNDS} alternating rounds\n")
    with tempfile.TemporaryDirectory() as scratch:
        for model in MODELS:
            print("\n".join(measure(model, Path(scratch))), flush=True)


if __name__ == "__main__":
    main()
