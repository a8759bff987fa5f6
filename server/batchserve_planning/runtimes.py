"""``recommend --runtimes torch,onnxruntime``: the runtime and the precision as dimensions of the search.

A model served by a torch backend that ``batchserve export`` writes as ONNX (resnet50, the
transformer classifier, the sentence embedder) is tried under each runtime asked for, at each
precision that runtime has on the device: torch float32 (float16/bfloat16 on GPU, ``--dtypes``),
torch int8 (the text backends' ``quantize = "int8"``, CPU), onnxruntime float32 and int8 (CPU).
The ONNX graphs are the user's (``--onnx float32=PATH,int8=PATH``, relative to the config's
folder) or written by ``batchserve export`` into the report folder's ``onnx/`` (once a run, its
time inside ``--budget-s``; int8 calibrated on the sample images for resnet50, dynamic for text).
"""

from __future__ import annotations

import argparse
import base64
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchserve_planning.candidates import Variant
from batchserve_planning.runtime_tables import onnx_kind

if TYPE_CHECKING:
    from batchserve_planning.load.inputs import Sample
    from batchserve_planning.load.progress import Bars

RUNTIMES = ("torch", "onnxruntime")
PRECISIONS = ("float32", "float16", "bfloat16", "int8")
EXPORT_TIMEOUT_S = 900.0
CALIBRATION_ITEMS = 200
"""Sample inputs given to ``export`` at most (resnet50's int8 calibrates on them)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runtimes",
                        help="search the runtime and precision too: comma-separated, torch,onnxruntime "
                             "(a resnet50, transformer or embedding model; precisions: --dtypes, "
                             "default float32,int8 on CPU)")
    parser.add_argument("--onnx", type=graphs_argument,
                        help="with --runtimes: ONNX model folders you have, by precision "
                             "(float32=PATH,int8=PATH, relative to the config's folder); others are "
                             "exported into the report folder")
    parser.add_argument("--max-drift",
                        help="leave out candidates whose outputs moved further than this from torch "
                             "float32's: comma-separated top1=, shift=, cosine=, abs= (docs/runtimes.md)")


def graphs_argument(text: str) -> dict[str, str]:
    """``--onnx float32=PATH,int8=PATH``."""
    graphs: dict[str, str] = {}
    for part in text.split(","):
        precision, _, path = part.partition("=")
        if precision not in ("float32", "int8") or not path:
            raise argparse.ArgumentTypeError(f"{part!r}: expected float32=PATH or int8=PATH")
        graphs[precision] = path
    return graphs


def with_runtimes(args: argparse.Namespace, base: dict[str, Any], combos: list[Variant]) -> list[Variant]:
    """``combos`` (``choices.device_dtypes``) as they are without ``--runtimes``; with it, every
    runtime asked for at every precision of ``--dtypes`` it has on each device."""
    from batchserve.backends import backend_class

    if args.runtimes is None:
        if args.onnx is not None:
            raise ValueError("--onnx gives graphs for --runtimes onnxruntime: add --runtimes")
        return combos
    runtimes = args.runtimes.split(",")
    unknown = [r for r in runtimes if r not in RUNTIMES]
    if unknown:
        raise ValueError(f"--runtimes: unknown {', '.join(unknown)}; choose from {', '.join(RUNTIMES)}")
    if onnx_kind(base["backend"]) is None:
        raise ValueError(f"--runtimes: the {base['backend']} backend has no ONNX preset (resnet50, "
                         "transformer and embedding have): leave --runtimes out")
    if args.dtypes and any(d not in PRECISIONS for d in args.dtypes.split(",")):
        raise ValueError(f"--dtypes {args.dtypes}: choose from {', '.join(PRECISIONS)}")
    for precision, path in (args.onnx or {}).items():
        if not (args.config.parent / path).exists():
            raise ValueError(f"--onnx {precision}={path}: no such file or folder "
                             f"{(args.config.parent / path).resolve()}")
    has_int8 = "quantize" in backend_class(base["backend"]).Options.model_fields
    variants: list[Variant] = []
    for device in dict.fromkeys(c.device for c in combos):
        gpu = device.startswith("cuda")
        wanted = (args.dtypes or ("float32,float16" if gpu else "float32,int8")).split(",")
        variants += [Variant(device, dtype, runtime) for runtime in runtimes for dtype in wanted
                     if _has(runtime, dtype, gpu=gpu, torch_int8=has_int8)]
    return variants


def _has(runtime: str, dtype: str, *, gpu: bool, torch_int8: bool) -> bool:
    """Whether ``runtime`` runs at ``dtype`` on the device (as the module's docstring lists)."""
    if dtype == "float32":
        return True
    if runtime == "onnxruntime":
        return dtype == "int8" and not gpu
    return dtype != "int8" if gpu else dtype == "int8" and torch_int8


def prepare(args: argparse.Namespace, combos: list[Variant], samples: list[Sample], out: Path,
            bars: Bars) -> tuple[list[Variant], list[dict[str, Any]]]:
    """The onnxruntime variants of ``combos`` with their graphs: the user's (``--onnx``), or
    exported now into ``out/onnx/PRECISION``; and what was done, for the report."""
    given = args.onnx or {}
    graphs: dict[str, str] = {}
    done: list[dict[str, Any]] = []
    for precision in dict.fromkeys(c.dtype for c in combos if c.runtime == "onnxruntime"):
        assert precision is not None
        if precision in given:
            path = (args.config.parent / given[precision]).resolve()
            graphs[precision] = str(path)
            done.append({"precision": precision, "path": str(path), "source": "--onnx", "seconds": 0.0})
            continue
        target = out / "onnx" / precision
        bars.print(f"exporting {args.model} to ONNX, {precision} (batchserve export): {target}")
        started = time.monotonic()
        report = export_graph(args.config, args.model, precision, target,
                              sample_files(samples, out / "onnx" / "samples"))
        graphs[precision] = str(target.resolve())
        done.append({"precision": precision, "path": str(target.resolve()), "source": "batchserve export",
                     "seconds": time.monotonic() - started, "export_drift": report.get("drift")})
    return [replace(c, graph=graphs[c.dtype]) if c.runtime == "onnxruntime" and c.dtype else c
            for c in combos], done


def export_graph(config: Path, model: str, precision: str, target: Path,
                 samples: list[Path]) -> dict[str, Any]:
    """``model``'s ONNX folder at ``precision`` written at ``target`` by ``batchserve export`` (in
    its own process: torch stays out of this one); its JSON report."""
    command = [sys.executable, "-m", "batchserve", "export", model, "--config", str(config),
               "--to", "onnx", "--output", str(target),
               "--quantize", "int8" if precision == "int8" else "none"]
    if samples:
        command += ["--samples", *map(str, samples)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=EXPORT_TIMEOUT_S)
    if result.returncode != 0:
        raise RuntimeError(f"batchserve export {model} ({precision}) failed: "
                           f"{result.stderr.strip()[-500:]}")
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def sample_files(samples: list[Sample], folder: Path) -> list[Path]:
    """The sample inputs as ``export --samples`` reads them: image files, or one JSON list of the texts."""
    folder.mkdir(parents=True, exist_ok=True)
    texts = [s.item for s in samples if isinstance(s.item, str)][:CALIBRATION_ITEMS]
    if texts:
        path = folder / "texts.json"
        path.write_text(json.dumps(texts), encoding="utf-8")
        return [path]
    files = []
    for index, sample in enumerate(samples[:CALIBRATION_ITEMS]):
        item = sample.item
        data = base64.b64decode(item["b64"]) if isinstance(item, dict) and "b64" in item else item
        if isinstance(data, bytes):
            path = folder / f"{index:04d}.img"
            path.write_bytes(data)
            files.append(path)
    return files
