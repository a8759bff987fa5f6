"""``batchserve inspect NAME --runtimes torch,onnxruntime``: the model's memory under each runtime
and precision, side by side.

Each variant (as ``recommend --runtimes`` searches them: torch float32, torch int8 where the
backend quantises, onnxruntime float32 and int8) is loaded by ``batchserve inspect`` in a fresh
process of its own, so that one runtime's libraries and allocations do not count in another's:
its resident set once loaded (interpreter and libraries included, as in a worker), what loading
added, and the peak growth of one ``predict_batch`` at each batch size. The ONNX graphs are the
user's (``--onnx``) or exported by ``batchserve export`` into a temporary folder, removed after.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from batchserve_planning.modelsize import format_bytes

INSPECT_TIMEOUT_S = 600.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from batchserve_planning.runtimes import graphs_argument

    parser.add_argument("--runtimes",
                        help="also measure the memory under each of these runtimes and precisions "
                             "(torch,onnxruntime: float32 and int8), each in a process of its own")
    parser.add_argument("--onnx", type=graphs_argument,
                        help="with --runtimes: ONNX model folders you have, by precision "
                             "(float32=PATH,int8=PATH, relative to the config's folder); others are "
                             "exported into a temporary folder")


def runtime_memory(args: argparse.Namespace, base: dict[str, Any], device: str,
                   batch_sizes: list[int]) -> list[dict[str, Any]]:
    """Each runtime and precision's memory (the module's docstring), in the order searched."""
    from batchserve_planning.candidates import Candidate, Variant
    from batchserve_planning.load.inputs import load_samples
    from batchserve_planning.runtimes import export_graph, sample_files, with_runtimes
    from batchserve_planning.sweep import repository_table

    query = argparse.Namespace(runtimes=args.runtimes, dtypes=None, onnx=args.onnx, config=args.config)
    variants = with_runtimes(query, base, [Variant(device, "float32")])
    base = {**base, "path": str((args.config.parent / base["path"]).resolve())}
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        graphs = {precision: str((args.config.parent / path).resolve())
                  for precision, path in (args.onnx or {}).items()}
        samples = sample_files(load_samples(args.inputs), folder / "samples") if args.inputs else []
        for variant in variants:
            graph = None
            if variant.runtime == "onnxruntime":
                assert variant.dtype is not None
                if variant.dtype not in graphs:
                    target = folder / variant.dtype
                    export_graph(args.config, base["name"], variant.dtype, target, samples)
                    graphs[variant.dtype] = str(target)
                graph = graphs[variant.dtype]
            candidate = Candidate(max(batch_sizes, default=1), 0.0, 1, variant.device, variant.dtype,
                                  runtime=variant.runtime, graph=graph)
            rows.append({"runtime": variant.runtime, "precision": variant.dtype,
                         **_inspect(candidate.table(base), repository_table(args.config), folder,
                                    batch_sizes, args.inputs)})
    return rows


def _inspect(table: dict[str, Any], repository: dict[str, Any], folder: Path, batch_sizes: list[int],
             inputs: Path | None) -> dict[str, Any]:
    from batchserve_planning.serverproc import toml_table

    config = folder / f"{table['backend']}-{len(list(folder.glob('*.toml')))}.toml"
    config.write_text(toml_table(repository, "[repository]") + "\n" + toml_table(table))
    command = [sys.executable, "-m", "batchserve", "inspect", table["name"], "--config", str(config),
               "--batch-sizes", ",".join(map(str, batch_sizes)) or "none", "--input-sizes", "none", "--json"]
    if inputs is not None:
        command += ["--inputs", str(inputs)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=INSPECT_TIMEOUT_S)
    if result.returncode != 0:
        return {"error": result.stderr.strip()[-500:]}
    report = json.loads(result.stdout)
    return {"backend": table["backend"], "loaded": report["loaded"], "memory": report.get("memory", [])}


def runtime_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The table ``inspect`` prints of ``runtime_memory``'s rows."""
    sizes = sorted({m["batch_size"] for row in rows for m in row.get("memory", [])})
    lines = ["memory by runtime and precision (each loaded in a process of its own; VmRSS once loaded, "
             "and the peak growth of one predict_batch):",
             "| runtime | precision | backend | once loaded | loading added | "
             + "".join(f"batch {n} | " for n in sizes), "|---" * (5 + len(sizes)) + "|"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['runtime']} | {row['precision']} | failed: "
                         f"{row['error'].splitlines()[-1][:120]} |")
            continue
        peaks = {m["batch_size"]: m["activation_bytes"] for m in row["memory"]}
        loaded = row["loaded"]
        lines.append(f"| {row['runtime']} | {row['precision']} | {row['backend']} | "
                     f"{format_bytes(loaded['bytes'])} | {format_bytes(loaded['growth_bytes'])} | "
                     + "".join(f"{format_bytes(peaks[n]) if n in peaks else '—'} | " for n in sizes))
    return lines
