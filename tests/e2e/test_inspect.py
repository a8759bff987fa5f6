"""batchserve inspect: size and measured memory, each model loaded in its own process."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import joblib
import pytest

from tests.support import PLUGINS, ROOT, write_models

RESNET50_PARAMETERS = 25_557_032
"""torchvision's resnet50 (shared/ANCHORS.md)."""


def _inspect(*args: str) -> subprocess.CompletedProcess[str]:
    # Its own process: inspect tunes the allocator and resets the peak RSS of the process it runs in.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PLUGINS), str(ROOT / "server"), str(ROOT)])}
    return subprocess.run([sys.executable, "-m", "batchserve", "inspect", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def _json(*args: str) -> dict[str, Any]:
    result = _inspect(*args, "--json")
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


@pytest.fixture(scope="module")
def resnet50_config(tmp_path_factory: pytest.TempPathFactory, resnet_weights: Path) -> Path:
    """The demo resnet50 (models/build_resnet50.py, built into a temporary folder by conftest)."""
    return write_models(tmp_path_factory.mktemp("resnet50") / "models.toml", [
        {"name": "resnet50", "backend": "resnet50", "path": str(resnet_weights), "max_batch_size": 2,
         "options": {"torch_threads": 1}},
    ])


def test_resnet50_parameters_weights_and_activation_memory(resnet50_config: Path,
                                                           resnet_weights: Path) -> None:
    report = _json("resnet50", "--config", str(resnet50_config), "--batch-sizes", "1,2",
                   "--input-sizes", "none")
    assert "memory_by_input" not in report
    size = report["size"]
    assert size["kind"] == "torch"
    assert size["parameters"] == RESNET50_PARAMETERS
    assert size["weight_bytes"] == {"float32": 4 * RESNET50_PARAMETERS, "float16": 2 * RESNET50_PARAMETERS,
                                    "bfloat16": 2 * RESNET50_PARAMETERS, "int8": RESNET50_PARAMETERS}
    # As loaded: the float32 parameters and the batch-norm running statistics.
    assert size["loaded_bytes"]["float32"] == 4 * (RESNET50_PARAMETERS + size["buffer_elements"]) - 4 * 53
    assert size["artifact_bytes"] == resnet_weights.stat().st_size
    assert [row["batch_size"] for row in report["memory"]] == [1, 2]
    for row in report["memory"]:
        assert row["activation_bytes"] > 0 and row["rows_per_s"] > 0
    assert "china.jpg" in report["inputs"]
    assert report["memory_method"].startswith("growth of the peak resident set")


def test_text_output(resnet50_config: Path) -> None:
    result = _inspect("resnet50", "--config", str(resnet50_config), "--batch-sizes", "none")
    assert result.returncode == 0, result.stderr
    assert "parameters: 25,557,032" in result.stdout
    assert "float16 48.7 MiB" in result.stdout
    # memory by input size, on by default: batch sizes 1 and the config's max_batch_size (2)
    assert "| source (px, longer side) | batch 1 | batch 2 |" in result.stdout
    assert "- 1024 px: china.jpg 1024x683, flower.jpg 1024x683" in result.stdout
    assert [line.split(" |")[0] for line in result.stdout.splitlines()
            if line.startswith(("| 224 ", "| 512 ", "| 1024 "))] == ["| 224", "| 512", "| 1024"]


def test_resnet50_memory_by_source_resolution(tmp_path: Path, resnet_weights: Path) -> None:
    # Full decoding: a source's pixels are all decoded before the resize (draft decoding would
    # decode a 1024 px JPEG at half scale, and resize every source to the same 224 crop).
    config = write_models(tmp_path / "models.toml", [
        {"name": "resnet50", "backend": "resnet50", "path": str(resnet_weights), "max_batch_size": 2,
         "options": {"torch_threads": 1, "decode": "full"}}])
    table = _json("resnet50", "--config", str(config), "--batch-sizes", "none",
                  "--input-batch-sizes", "1,2")["memory_by_input"]
    assert (table["kind"], table["unit"], table["device"]) == ("image", "px", "cpu")
    assert table["sizes"] == [224, 512, 1024] and table["batch_sizes"] == [1, 2]
    assert "1024x683" in table["items"][2] and "224x149" in table["items"][0]
    peaks, preprocessing = table["peak_bytes"], table["preprocess_peak_bytes"]
    assert [len(row) for row in peaks] == [len(row) for row in preprocessing] == [2, 2, 2]
    for size_peaks, size_preprocessing in zip(peaks, preprocessing, strict=True):
        # a forward pass over two images holds more than over one (MiBs of activations apart)
        assert size_peaks[1] > size_peaks[0] > 0
        assert all(peak >= pre for peak, pre in zip(size_peaks, size_preprocessing, strict=True))
    # one 1024x683 source decoded whole is 2 MiB of RGB at once; a 224 px one's pipeline is less
    for batch in range(2):
        assert preprocessing[2][batch] > preprocessing[0][batch] + 2**20


def test_transformer_memory_by_tokens_per_item(tmp_path: Path, transformer_dir: Path) -> None:
    config = write_models(tmp_path / "models.toml", [
        {"name": "sentiment", "backend": "transformer", "path": str(transformer_dir),
         "max_batch_size": 8, "options": {"max_length": 128, "torch_threads": 1}}])
    table = _json("sentiment", "--config", str(config), "--batch-sizes", "none")["memory_by_input"]
    assert (table["kind"], table["unit"]) == ("text", "tokens")
    assert table["sizes"] == [16, 64, 128] and table["batch_sizes"] == [1, 8]
    assert table["items"][2].startswith("128 tokens")
    peaks = table["peak_bytes"]
    # eight texts of 128 tokens: hidden states and attention of 1,024 tokens, MiBs over the rest
    assert peaks[2][1] > peaks[2][0] and peaks[2][1] > peaks[0][1]
    assert all(peak >= 0 for row in peaks for peak in row)
    result = _inspect("sentiment", "--config", str(config), "--batch-sizes", "none",
                      "--input-sizes", "16,512")
    assert result.returncode == 2
    assert "a text size must be 1 to 128 tokens (the model's max_length), not 512" in result.stderr


def test_sklearn_reports_fitted_values_and_pickled_size(tmp_path: Path, diabetes_path: Path) -> None:
    config = write_models(tmp_path / "models.toml", [
        {"name": "diabetes", "backend": "sklearn", "path": str(diabetes_path)}])
    report = _json("diabetes", "--config", str(config), "--batch-sizes", "1,4")
    estimator = joblib.load(diabetes_path)
    size = report["size"]
    assert size["kind"] == "estimator" and size["estimator"] == "LinearRegression"
    # coef_ (10), singular_ (10) and intercept_ (1): the fitted values it predicts with, and more.
    assert size["parameters"] == estimator.coef_.size + estimator.singular_.size + 1
    assert size["pickled_bytes"] == len(pickle.dumps(estimator))
    assert report["inputs"] == "a row of 10 zeros"
    assert [row["batch_size"] for row in report["memory"]] == [1, 4]
    assert report["memory_by_input"] is None  # rows have no size to vary


def test_a_third_party_backend_needs_inputs(tmp_path: Path) -> None:
    config = write_models(tmp_path / "models.toml", [{"name": "echo", "backend": "echo", "path": "unused"}])
    result = _inspect("echo", "--config", str(config), "--batch-sizes", "1")
    assert result.returncode == 2
    assert "no default sample for backend 'echo': give --inputs" in result.stderr
    (tmp_path / "n.json").write_text("[1.5, 2.5]")
    report = _json("echo", "--config", str(config), "--batch-sizes", "1,8",
                   "--inputs", str(tmp_path / "n.json"))
    assert report["size"]["kind"] == "unknown"
    assert [row["batch_size"] for row in report["memory"]] == [1, 8]


def test_unknown_model(tmp_path: Path) -> None:
    config = write_models(tmp_path / "models.toml", [{"name": "echo", "backend": "echo", "path": "unused"}])
    result = _inspect("nope", "--config", str(config))
    assert result.returncode == 2
    assert "no model 'nope'" in result.stderr


def test_memory_is_reported_per_worker_and_for_n_workers(tmp_path: Path, diabetes_path: Path) -> None:
    config = write_models(tmp_path / "models.toml", [
        {"name": "diabetes", "backend": "sklearn", "path": str(diabetes_path)}])
    report = _json("diabetes", "--config", str(config), "--batch-sizes", "1,4", "--workers", "3")
    loaded, worker = report["loaded"], report["per_worker"]
    # This process once the model is loaded: the interpreter, scikit-learn and the model.
    assert loaded["bytes"] > loaded["growth_bytes"] > 0
    largest = report["memory"][-1]
    assert worker["batch_size"] == largest["batch_size"] == 4
    assert worker["bytes"] == loaded["bytes"] + largest["input_bytes"] + largest["activation_bytes"]
    assert worker["workers"] == 3 and worker["server_bytes"] == 3 * worker["bytes"]
    text = _inspect("diabetes", "--config", str(config), "--batch-sizes", "1", "--workers", "2")
    assert text.returncode == 0, text.stderr
    assert "every worker loads its own copy: 2 workers x " in text.stdout
    assert _inspect("diabetes", "--config", str(config), "--workers", "0").returncode == 2
