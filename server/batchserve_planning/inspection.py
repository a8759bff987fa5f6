"""``batchserve inspect NAME``: a model's size and its memory per batch size, measured.

Loads the model as the server would (from ``--config``), then prints its parameter
count, its weight bytes in each dtype, and for each batch size the memory of the
batch's input and what one ``predict_batch`` adds at its peak (activations): the
CUDA allocator's peak on GPU, the growth of the process's peak resident set on
CPU. Inputs are ``--inputs`` (as for ``loadtest``) or the backend's own samples
(a bundled photo for resnet50, a text long enough to reach ``max_length`` for the
transformer, a row of zeros for sklearn and the tree backends).

Memory is per worker: with ``serve --workers N`` every worker process loads its own copy of
every model, so the server holds N times what one worker does (the supervisor holds no
model). ``--workers N`` shows that product: per worker, this process's resident set once
the model is loaded (interpreter and libraries included, as in a worker) plus the input and
activations of the largest batch measured; on GPU the allocator's bytes, and what
``nvidia-smi`` shows for this process (its CUDA context included: every worker has one).

``--model-config PATH`` sizes a Hugging Face model from its ``config.json`` alone, loading
nothing (``configreport.py``); ``--hardware`` then says on how many GPUs of each profile it fits.

Memory by input size (``memory_by_input``, ``input_memory.py``): for image and text models, the
peak of one batch, preprocessing included, by source resolution or tokens per item and batch
size (``--input-sizes``, ``--input-batch-sizes``; ``--input-sizes none`` skips it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from batchserve_planning.modelsize import format_bytes as _bytes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from batchserve_planning import configreport, runtime_memory

    parser.add_argument("name", nargs="?", help="model name in the config (none with --model-config)")
    parser.add_argument("--config", type=Path, default=Path("models/models.toml"),
                        help="model repository file (models/models.toml)")
    parser.add_argument("--batch-sizes", default="1,2,4,8,16",
                        help="batch sizes to measure, comma-separated, or 'none' (1,2,4,8,16)")
    parser.add_argument("--input-sizes", default="auto",
                        help="memory by input size: image sources' px or text tokens per item, "
                             "comma-separated; 'auto': the backend's (224,512,1024 px; 16,64,256 "
                             "tokens and max_length); 'none' to skip")
    parser.add_argument("--input-batch-sizes", default="auto",
                        help="batch sizes for memory by input size, comma-separated; 'auto': 1, 8 "
                             "and the config's max_batch_size")
    parser.add_argument("--inputs", type=Path, help="sample inputs (default: one per built-in backend)")
    parser.add_argument("--device", help="device to load on (the config's)")
    parser.add_argument("--workers", type=int, default=1,
                        help="show the memory of a server with this many workers (1): each holds a copy")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    configreport.add_arguments(parser)
    runtime_memory.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from batchserve.backends.base import LoadError
    from batchserve.config import ConfigError, load_models

    from batchserve_planning.input_memory import parse_sizes
    from batchserve_planning.load.inputs import InputError

    if args.model_config is not None:
        return _run_config(args)
    if args.name is None:
        print("batchserve inspect: give a model NAME (from --config) or --model-config PATH",
              file=sys.stderr)
        return 2
    if args.hardware is not None:
        print("batchserve inspect: --hardware sizes GPUs for --model-config (for a served model, "
              "recommend --hardware measures it)", file=sys.stderr)
        return 2
    try:
        configs = {c.name: c for c in load_models(args.config)}
        if args.name not in configs:
            raise ConfigError(f"{args.config}: no model {args.name!r}; models: {sorted(configs)}")
        sizes = [] if args.batch_sizes == "none" else [int(s) for s in args.batch_sizes.split(",")]
        if args.workers < 1:
            raise ValueError(f"--workers must be at least 1, not {args.workers}")
        input_sizes = parse_sizes(args.input_sizes)
        input_batches = parse_sizes(args.input_batch_sizes)
        if input_batches == []:
            raise ValueError("--input-batch-sizes: give batch sizes or 'auto' (--input-sizes none "
                             "skips the measurement)")
        report = inspect_model(configs[args.name], sizes, inputs=args.inputs, device=args.device,
                               workers=args.workers, input_sizes=input_sizes,
                               input_batch_sizes=input_batches)
        if args.runtimes:
            from batchserve_planning.runtime_memory import runtime_memory
            from batchserve_planning.runtime_tables import model_table

            report["runtimes"] = runtime_memory(args, model_table(args.config, args.name),
                                                report["device"], sizes)
    except (ConfigError, LoadError, InputError, ValueError, RuntimeError) as exc:
        print(f"batchserve inspect: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def _run_config(args: argparse.Namespace) -> int:
    from batchserve_planning import configreport
    from batchserve_planning.configsize import ModelConfigError
    from batchserve_planning.hardware import HardwareError

    if args.name is not None:
        print(f"batchserve inspect: --model-config sizes a config; leave out the name ({args.name!r})",
              file=sys.stderr)
        return 2
    try:
        return configreport.run(args)
    except (ModelConfigError, HardwareError, ValueError) as exc:
        print(f"batchserve inspect: {exc}", file=sys.stderr)
        return 2


def inspect_model(config: Any, batch_sizes: list[int], *, inputs: Path | None = None,
                  device: str | None = None, workers: int = 1, input_sizes: list[int] | None = None,
                  input_batch_sizes: list[int] | None = None) -> dict[str, Any]:
    """Load ``config``'s model here and measure it (see the module's docstring). ``input_sizes``
    None: the backend's own sizes, []: no memory by input size; ``input_batch_sizes`` None: 1, 8
    and the config's ``max_batch_size``."""
    from batchserve.backends import backend_class

    from batchserve_planning.input_memory import default_batch_sizes, memory_by_input
    from batchserve_planning.modelsize import activation_memory, model_size, resident_bytes

    device = device or config.device
    backend = backend_class(config.backend)(config)
    before = resident_bytes(device)
    backend.load(device)
    loaded = resident_bytes(device)
    try:
        report: dict[str, Any] = {
            "name": config.name, "backend": config.backend, "path": str(config.path), "device": device,
            "dtype": getattr(backend.options, "dtype", None), "size": model_size(backend)}
        report["loaded"] = {"bytes": loaded, "growth_bytes": loaded - before,
                            "method": _loaded_method(device)}
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
        if input_sizes != []:
            report["memory_by_input"] = memory_by_input(
                backend, device, input_sizes,
                input_batch_sizes or default_batch_sizes(config.max_batch_size))
        report["per_worker"] = per_worker(report, workers)
        from batchserve_planning.estimate_check import beside_measurement

        estimate = beside_measurement(backend, report)
        if estimate is not None:
            report["config_estimate"] = estimate
        return report
    finally:
        backend.unload()


def _loaded_method(device: str) -> str:
    if device.startswith("cuda"):
        return "CUDA allocator bytes (torch.cuda.memory_allocated) once loaded"
    return "this process's resident set (VmRSS) once loaded: interpreter, libraries and the model"


def per_worker(report: dict[str, Any], workers: int) -> dict[str, Any]:
    """What one worker holds for this model at the largest batch measured, and ``workers`` times
    that: every worker loads its own copy (the module's docstring)."""
    from batchserve_planning.serverproc import process_gpu_bytes

    largest = max(report.get("memory") or [], key=lambda row: row["batch_size"], default=None)
    batch = 0 if largest is None else largest["input_bytes"] + largest["activation_bytes"]
    one = report["loaded"]["bytes"] + batch
    result: dict[str, Any] = {"workers": workers, "bytes": one, "server_bytes": workers * one,
                              "batch_size": None if largest is None else largest["batch_size"]}
    if report["device"].startswith("cuda"):
        gpu = process_gpu_bytes(os.getpid())
        result["gpu_process_bytes"] = gpu
        result["server_gpu_process_bytes"] = None if gpu is None else workers * gpu
    return result


def _sample_items(backend: Any, inputs: Path | None) -> tuple[list[Any], str]:
    from batchserve.backends.capabilities import SampleItems

    from batchserve_planning.load.inputs import InputError, load_samples

    if inputs is not None:
        samples = load_samples(inputs, type(backend).input_kind)
        return [s.item for s in samples], f"{len(samples)} samples from {inputs}"
    if isinstance(backend, SampleItems):
        items, description = backend.sample_items()
        return items, description
    raise InputError(f"no default sample for backend {backend.config.backend!r}: give --inputs")


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
    lines += _per_worker_lines(report)
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
    if report.get("memory_by_input"):
        from batchserve_planning.input_memory import memory_by_input_caption, memory_by_input_lines

        table = report["memory_by_input"]
        lines += ["", *memory_by_input_caption(table), "", *memory_by_input_lines(table)]
    if report.get("runtimes"):
        from batchserve_planning.runtime_memory import runtime_lines

        lines += ["", *runtime_lines(report["runtimes"])]
    if report.get("config_estimate"):
        from batchserve_planning.estimate_check import lines as estimate_lines

        lines += ["", *estimate_lines(report["config_estimate"])]
    return "\n".join(lines)


def _per_worker_lines(report: dict[str, Any]) -> list[str]:
    worker, loaded = report["per_worker"], report["loaded"]
    count = worker["workers"]
    batch = (f" + {_bytes(worker['bytes'] - loaded['bytes'])} (input and activations of a batch of "
             f"{worker['batch_size']})" if worker["batch_size"] else "")
    lines = [f"memory per worker: {_bytes(loaded['bytes'])} once loaded ({loaded['method']}; loading "
             f"added {_bytes(loaded['growth_bytes'])}){batch} = {_bytes(worker['bytes'])}",
             f"every worker loads its own copy: {count} worker{'s' if count > 1 else ''} x "
             f"{_bytes(worker['bytes'])} = {_bytes(worker['server_bytes'])} (--workers N to see N; "
             "the supervisor holds no model)"]
    if worker.get("gpu_process_bytes"):
        lines.append(f"GPU per worker (nvidia-smi, CUDA context included): "
                     f"{_bytes(worker['gpu_process_bytes'])}; {count} x = "
                     f"{_bytes(worker['server_gpu_process_bytes'])}")
    return lines
