"""The README's worked example: Llama-2 7B, 13B and 70B sized from their configs, on 24, 48 and 80 GiB GPUs.

Runs ``batchserve inspect --model-config tests/fixtures/llama2/<size> --hardware
models/hardware.gpus.example.toml --json`` for each (nothing downloaded: the fixtures are the
published configuration values) and prints one markdown table: per model and weight format, the
weights, and per GPU size the least GPUs for 1, 8 and 32 sequences of 4,096 tokens, with the
$/hour of the 32 (the example file's prices).

Usage: python benchmarks/llama2_sizing.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("7b", "13b", "70b")
CONTEXT = 4096
SEQUENCES = "1,8,32"
HARDWARE = ROOT / "models" / "hardware.gpus.example.toml"


def report(size: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "server")}
    out = subprocess.run([sys.executable, "-m", "batchserve", "inspect", "--model-config",
                          str(ROOT / "tests" / "fixtures" / "llama2" / size), "--hardware", str(HARDWARE),
                          "--context", str(CONTEXT), "--sequences", SEQUENCES, "--json"],
                         check=True, capture_output=True, text=True, env=env, timeout=120).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def cell(row: dict[str, Any]) -> str:
    counts = [str(r["gpus"]) if r["gpus"] is not None else "—" for r in row["by_sequences"]]
    last = row["by_sequences"][-1]["price_per_hour"]
    return " / ".join(counts) + (f" (${last:,.2f}/h)" if last is not None else "")


def main() -> None:
    profiles: list[str] = []
    lines: list[str] = []
    for size in MODELS:
        result = report(size)
        kv = result["kv_cache"]["per_sequence_bytes"] / 2**30
        by_format: dict[str, dict[str, str]] = {}
        for row in result["hardware"]["rows"]:
            if row["profile"] not in profiles:
                profiles.append(row["profile"])
            by_format.setdefault(row["format"], {})[row["profile"]] = cell(row)
        for weight_format, cells in by_format.items():
            weights = result["weight_bytes"][weight_format] / 2**30
            lines.append(f"| {size.upper()} ({result['parameters'] / 1e9:.2f}B, KV {kv:.2f} GiB a sequence) "
                         f"| {weight_format} | {weights:.1f} GiB | "
                         + " | ".join(cells[p] for p in profiles) + " |")
    print("| model | format | weights | " + " | ".join(f"{p} GPUs" for p in profiles) + " |")
    print("|---" * (3 + len(profiles)) + "|")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
