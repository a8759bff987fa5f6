"""What decoding a v2 (Open Inference Protocol) request costs: this tree's ``parse_infer`` vs a
baseline revision's, on hostile and on large bodies, interleaved in one process.

The baseline defaults to the code before the v2 limits (issue 10), whose ``math.prod`` over a
shape of 16,000 dims of 2^64-1 (336 KB) grew with the square of the body.
Usage: .venv/bin/python benchmarks/v2_parse_cost.py [--baseline REV] [--rounds N]
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import harness
import orjson
from batchserve.errors import BatchserveError
from batchserve.v2 import tensors

BASELINE = "5447d98"  # main before the v2 limits
ROWS = 4096  # the default max_items: the new code refuses a first dimension above it
Case = tuple[str, bytes, bytes | None]


def baseline_module(revision: str) -> ModuleType:
    source = subprocess.run(["git", "show", f"{revision}:server/batchserve/v2/tensors.py"], cwd=harness.ROOT,
                            check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "tensors_baseline.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("tensors_baseline", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def body(datatype: str, shape: list[int], **spec: Any) -> bytes:
    return orjson.dumps({"inputs": [{"name": "x", "datatype": datatype, "shape": shape, **spec}]})


def cases() -> list[Case]:
    made: list[Case] = []
    for dims in (4000, 8000, 16000):
        made.append((f"shape of {dims} dims of 2^64-1", body("FP32", [2**64 - 1] * dims, data=[]), None))
    for size in (64 << 10, 1 << 20):
        count = size // 4 // ROWS * ROWS
        header = body("BYTES", [ROWS, count // ROWS], parameters={"binary_data_size": 4 * count})
        made.append((f"binary BYTES, {count} empty elements", header + b"\0\0\0\0" * count,
                     str(len(header)).encode()))
        numbers = size // 2 // ROWS * ROWS
        shape = [ROWS, numbers // ROWS]
        made.append((f"JSON FP64, {numbers} numbers, flat", body("FP64", shape, data=[0] * numbers), None))
        made.append((f"JSON FP64, {numbers} numbers, nested",
                     body("FP64", shape, data=[[0] * shape[1]] * ROWS), None))
        strings = size // 3 // ROWS * ROWS
        made.append((f"JSON BYTES, {strings} strings",
                     body("BYTES", [ROWS, strings // ROWS], data=[""] * strings), None))
    return made


def seconds(parse: Callable[[bytes, bytes | None], Any], case: Case) -> tuple[float, str]:
    _, content, header = case
    started = time.perf_counter()
    try:
        parse(content, header)
        outcome = "ok"
    except BatchserveError as exc:
        outcome = f"{exc.status}"
    return time.perf_counter() - started, outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=BASELINE)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    old = baseline_module(args.baseline)
    parsers = {"baseline": old.parse_infer, "this tree": tensors.parse_infer}
    rows: list[dict[str, Any]] = []
    for case in cases():
        best = {name: float("inf") for name in parsers}
        outcomes: dict[str, str] = {}
        for _ in range(args.rounds):  # interleaved: drift on a shared machine hits both alike
            for name, parse in parsers.items():
                took, outcomes[name] = seconds(parse, case)
                best[name] = min(best[name], took)
        rows.append({"case": case[0], "KiB": len(case[1]) // 1024,
                     **{f"{n} ms": best[n] * 1e3 for n in parsers},
                     **{f"{n} outcome": outcomes[n] for n in parsers}})
    print(f"commit {harness.commit()}, baseline {args.baseline}, best of {args.rounds}, "
          f"Python {sys.version.split()[0]}\n")
    print("| case | KiB | baseline ms | this tree ms | ratio | outcome (baseline / this tree) |")
    print("|---|---:|---:|---:|---:|---|")
    for row in rows:
        print(f"| {row['case']} | {row['KiB']} | {row['baseline ms']:.2f} | {row['this tree ms']:.2f} | "
              f"{row['baseline ms'] / row['this tree ms']:.1f}x | "
              f"{row['baseline outcome']} / {row['this tree outcome']} |")
    harness.save_results("v2_parse_cost", rows)


if __name__ == "__main__":
    main()
