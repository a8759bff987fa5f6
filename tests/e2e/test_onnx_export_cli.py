"""``batchserve export`` as a user runs it: the folder written, the drift printed as JSON; a model
it cannot export is a clear error (exit 2), nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import SERVER_ENV, write_models

pytestmark = pytest.mark.slow


def export(config: Path, name: str, output: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "batchserve", "export", name, "--config", str(config),
                           "--to", "onnx", "--output", str(output)], capture_output=True, text=True,
                          env={**os.environ, **SERVER_ENV}, timeout=300)


def test_export_writes_the_folder_and_prints_the_drift(tmp_path: Path, transformer_dir: Path,
                                                       diabetes_path: Path) -> None:
    config = write_models(tmp_path / "models.toml", [
        {"name": "sentiment", "backend": "transformer", "path": str(transformer_dir)},
        {"name": "diabetes", "backend": "sklearn", "path": str(diabetes_path)}])
    done = export(config, "sentiment", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["backend"] == "onnx-classifier" and report["precision"] == "float32"
    assert report["drift"]["top1_agreement"] == 1.0 and report["drift"]["max_probability_shift"] < 1e-4
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {"model.onnx", "tokenizer.json", "config.json"}
    assert not list((tmp_path / "out").glob("*.safetensors"))
    refused = export(config, "diabetes", tmp_path / "no")
    assert refused.returncode == 2
    assert "served by 'sklearn'; export writes the models of" in refused.stderr
    assert not (tmp_path / "no").exists()
    missing = export(config, "nope", tmp_path / "no")
    assert missing.returncode == 2 and "no model 'nope'" in missing.stderr
