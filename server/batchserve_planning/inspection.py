"""``batchserve inspect NAME``: a model's size and its memory per batch size, measured.

Loads the model as the server would (from ``--config``), then prints its parameter
count, its weight bytes in each dtype, and for each batch size the memory of the
batch's input and what one ``predict_batch`` adds at its peak (activations): the
CUDA allocator's peak on GPU, the growth of the process's peak resident set on
CPU. Inputs are ``--inputs`` (as for ``loadtest``) or the backend's own samples
(a bundled photo for resnet50, a text long enough to reach ``max_length`` for the
transformer, a row of zeros for sklearn and the tree backends).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="model name in the config")
    parser.add_argument("--config", type=Path, default=Path("models/models.toml"),
                        help="model repository file (models/models.toml)")
    parser.add_argument("--batch-sizes", default="1,2,4,8,16",
                        help="batch sizes to measure, comma-separated, or 'none' (1,2,4,8,16)")
    parser.add_argument("--inputs", type=Path, help="sample inputs (default: one per built-in backend)")
    parser.add_argument("--device", help="device to load on (the config's)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args: argparse.Namespace) -> int:
    from batchserve.backends.base import LoadError
    from batchserve.config import ConfigError, load_models

    from batchserve_planning.load.inputs import InputError

    try:
        configs = {c.name: c for c in load_models(args.config)}
        if args.name not in configs:
            raise ConfigError(f"{args.config}: no model {args.name!r}; models: {sorted(configs)}")
        sizes = [] if args.batch_sizes == "none" else [int(s) for s in args.batch_sizes.split(",")]
        report = inspect_model(configs[args.name], sizes, inputs=args.inputs, device=args.device)
    except (ConfigError, LoadError, InputError, ValueError, RuntimeError) as exc:
        print(f"batchserve inspect: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def inspect_model(config: Any, batch_sizes: list[int], *, inputs: Path | None = None,
                  device: str | None = None) -> dict[str, Any]:
    """Load ``config``'s model here and measure it (see the module's docstring)."""
    from batchserve.backends import backend_class

    from batchserve_planning.modelsize import activation_memory, model_size

    device = device or config.device
    backend = backend_class(config.backend)(config)
    backend.load(device)
    try:
        report: dict[str, Any] = {
            "name": config.name, "backend": config.backend, "path": str(config.path), "device": device,
            "dtype": getattr(backend.options, "dtype", None), "size": model_size(backend)}
        if batch_sizes:
            items, described = _sample_items(backend, inputs)
            parameters = backend.parse_parameters({})
            report["inputs"] = described
            report["memory"] = activation_memory(
                backend, lambda n: [backend.preprocess(items[i % len(items)], parameters)
                                    for i in range(n)], batch_sizes, device)
            report["memory_method"] = ("CUDA allocator peak (torch.cuda.max_memory_allocated)"
                                       if device.startswith("cuda") else
                                       "growth of the peak resident set (VmHWM) during predict_batch")
        return report
    finally:
        backend.unload()


def _sample_items(backend: Any, inputs: Path | None) -> tuple[list[Any], str]:
    from batchserve.backends.capabilities import SampleItems

    from batchserve_planning.load.inputs import InputError, load_samples

    if inputs is not None:
        samples = load_samples(inputs)
        return [s.item for s in samples], f"{len(samples)} samples from {inputs}"
    if isinstance(backend, SampleItems):
        items, description = backend.sample_items()
        return items, description
    raise InputError(f"no default sample for backend {backend.config.backend!r}: give --inputs")


def _bytes(value: float | None) -> str:
    if value is None:
        return "—"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(value) >= scale:
            return f"{value / scale:,.1f} {unit}"
    return f"{value:,.0f} B"


def format_report(report: dict[str, Any]) -> str:
    size = report["size"]
    dtype = f", {report['dtype']}" if report.get("dtype") else ""
    lines = [f"{report['name']} (backend {report['backend']}, {report['device']}{dtype})",
             f"artifact: {report['path']} ({_bytes(size.get('artifact_bytes'))})"]
    if size["kind"] == "torch":
        lines.append(f"parameters: {size['parameters']:,} (+ {size['buffer_elements']:,} buffer elements)")
        lines.append("weights by dtype: " + ", ".join(
            f"{dtype} {_bytes(n)}" for dtype, n in size["weight_bytes"].items()))
    elif size["kind"] == "trees":
        lines.append(f"trees: {size['trees']:,} ({size['library']}, objective {size['objective']}), "
                     f"max depth {size['max_depth']}, {size['leaves']:,} leaves, "
                     f"{size['features']:,} features")
    elif size["kind"] == "estimator":
        lines.append(f"estimator: {size['estimator']}, {size['parameters']:,} fitted values")
        lines.append(f"pickled: {_bytes(size['pickled_bytes'])}")
    else:
        lines.append(size["note"])
    if size.get("loaded_bytes"):
        lines.append("as loaded: " + ", ".join(
            f"{dtype} {_bytes(n)}" for dtype, n in size["loaded_bytes"].items()))
    if report.get("memory"):
        lines += ["", f"memory per batch ({report['memory_method']}; inputs: {report['inputs']}):",
                  "| batch | input | activations (peak) | per row | time | rows/s |",
                  "|---|---|---|---|---|---|"]
        for row in report["memory"]:
            rate = f"{row['rows_per_s']:,.1f}" if row["rows_per_s"] else "—"
            lines.append(f"| {row['batch_size']} | {_bytes(row['input_bytes'])} | "
                         f"{_bytes(row['activation_bytes'])} | "
                         f"{_bytes(row['activation_bytes'] / row['batch_size'])} | "
                         f"{row['seconds'] * 1000:.2f} ms | {rate} |")
    return "\n".join(lines)
