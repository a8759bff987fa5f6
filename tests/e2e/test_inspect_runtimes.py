"""``batchserve inspect NAME --runtimes torch,onnxruntime``: the demo classifier's memory under each
runtime and precision, each loaded in a process of its own; the ONNX graphs exported for it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from batchserve_planning.inspection import format_report

from tests.support import SERVER_ENV, write_models

pytestmark = pytest.mark.slow


def test_inspect_reports_the_memory_of_each_runtime_and_precision(tmp_path: Path,
                                                                  transformer_dir: Path) -> None:
    config = write_models(tmp_path / "models.toml", [
        {"name": "sentiment", "backend": "transformer", "path": str(transformer_dir), "max_batch_size": 8,
         "options": {"max_length": 64}}])
    command = [sys.executable, "-m", "batchserve", "inspect", "sentiment", "--config", str(config),
               "--batch-sizes", "1,2", "--input-sizes", "none", "--runtimes", "torch,onnxruntime"]
    done = subprocess.run([*command, "--json"], capture_output=True, text=True,
                          env={**os.environ, **SERVER_ENV}, timeout=500)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)["runtimes"]
    assert [(r["runtime"], r["precision"], r["backend"]) for r in rows] == [
        ("torch", "float32", "transformer"), ("torch", "int8", "transformer"),
        ("onnxruntime", "float32", "onnx-classifier"), ("onnxruntime", "int8", "onnx-classifier")]
    for row in rows:
        assert row["loaded"]["bytes"] > row["loaded"]["growth_bytes"] > 0
        assert [m["batch_size"] for m in row["memory"]] == [1, 2]
    loaded = {(r["runtime"], r["precision"]): r["loaded"]["bytes"] for r in rows}
    # a process of its own each: onnxruntime's holds no torch (hundreds of MiB of libraries)
    assert max(loaded[("onnxruntime", p)] for p in ("float32", "int8")) < min(
        loaded[("torch", p)] for p in ("float32", "int8"))

    text = format_report(json.loads(done.stdout))  # what inspect prints without --json
    assert "memory by runtime and precision" in text
    assert "| onnxruntime | int8 | onnx-classifier |" in text
