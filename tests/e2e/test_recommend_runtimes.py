"""``recommend --runtimes torch,onnxruntime``: the demo classifier (the smallest real model with an
ONNX path) searched under torch and ONNX Runtime, float32 and int8, each candidate's drift from
torch float32 measured through its own server, ``--max-drift`` leaving the int8 ones out, and the
drift figures recomputed from the outputs results.json keeps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from batchserve.cli import main
from batchserve.config import parse_models
from batchserve.drift import DRIFTS

from tests.support import SERVER_ENV, recommend_status, write_models

pytestmark = pytest.mark.slow

TEXTS = ["The battery life is great and the screen is sharp.", "Terrible support, it broke after a week.",
         "how do I reset my password", "Où est la gare la plus proche ?", "ok", "never again",
         "the delivery was late but the product works", "five stars", "the manual is confusing",
         "cheap plastic, feels flimsy", "great value for the price", "it is what it is"]
MAX_SHIFT = 0.001
"""``--max-drift shift=``: float32 graphs move the classifier's probabilities by ~1e-7, int8 (torch's
dynamic quantisation, ONNX Runtime's) by 0.006 to 0.014 on these texts (measured): a bound
between, with a margin of several times either way."""
FAST = ["--max-batch-cap", "1", "--max-wait-ms", "0", "--instances", "1", "--workers", "1",
        "--max-concurrency", "2", "--step-s", "0.3", "--max-step-s", "1", "--min-responses", "30",
        "--slo-p99-ms", "5000", "--no-progress"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, transformer_dir: Path) -> tuple[int, Path, Path]:
    """One sweep: the float32 graph given with ``--onnx`` (as a user who has exported it), the
    int8 one exported by recommend itself."""
    root = tmp_path_factory.mktemp("runtimes")
    config = write_models(root / "models.toml", [
        {"name": "sentiment", "backend": "transformer", "path": str(transformer_dir), "max_batch_size": 8,
         "timeout_ms": 30000, "options": {"max_length": 128}}], root=root.parent)
    done = subprocess.run([sys.executable, "-m", "batchserve", "export", "sentiment", "--config", str(config),
                           "--to", "onnx", "--output", str(root / "sentiment-onnx")], capture_output=True,
                          text=True, env={**os.environ, **SERVER_ENV}, timeout=300)
    assert done.returncode == 0, done.stderr
    texts = root / "texts.json"
    texts.write_text(json.dumps(TEXTS), encoding="utf-8")
    out = root / "report"
    code = main(["recommend", "--config", str(config), "--model", "sentiment", "--inputs", str(texts),
                 "--runtimes", "torch,onnxruntime", "--onnx", "float32=sentiment-onnx",
                 "--max-drift", f"shift={MAX_SHIFT}", "--out", str(out), *FAST])
    return code, out, root


def results_of(out: Path) -> dict[str, Any]:
    results: dict[str, Any] = json.loads((out / "results.json").read_text())
    return results


def test_every_runtime_and_precision_is_a_candidate_with_its_drift_and_max_drift_leaves_int8_out(
        run: tuple[int, Path, Path]) -> None:
    code, out, root = run
    assert code == recommend_status(out)
    results = results_of(out)
    candidates = results["candidates"]
    by_variant = {(c["candidate"]["runtime"], c["candidate"]["dtype"]): c for c in candidates}
    assert set(by_variant) == {("torch", "float32"), ("torch", "int8"), ("onnxruntime", "float32"),
                               ("onnxruntime", "int8")}
    for (_, dtype), outcome in by_variant.items():
        drift = outcome["drift"]
        assert set(drift) == {"top1_agreement", "max_probability_shift"}
        if dtype == "float32":
            assert drift["top1_agreement"] == 1.0 and drift["max_probability_shift"] < 1e-4
            assert outcome["excluded"] is None and outcome["best"] is not None
        else:
            assert drift["max_probability_shift"] > MAX_SHIFT
            assert outcome["excluded"].startswith("drift past --max-drift: shift ")
            assert outcome["steps"] == [] and outcome["best"] is None  # not ramped
    assert results["candidates"][results["pick"]]["candidate"]["dtype"] == "float32"
    # the graphs: float32 the user's, int8 exported into the report folder
    graphs = {g["precision"]: g for g in results["runtimes"]}
    assert graphs["float32"]["source"] == "--onnx"
    assert graphs["float32"]["path"] == str((root / "sentiment-onnx").resolve())
    assert graphs["int8"]["source"] == "batchserve export"
    assert (out / "onnx" / "int8" / "model.onnx").is_file()
    assert by_variant[("onnxruntime", "int8")]["candidate"]["graph"] == graphs["int8"]["path"]

    report = (out / "report.md").read_text()
    section = report.split("## Accuracy: drift from torch float32")[1]
    for outcome in candidates:
        row = next(line for line in section.splitlines() if f"| {outcome['label']} |" in line)
        assert f"{outcome['drift']['max_probability_shift']:.4g}" in row
        assert ("drift past --max-drift" in row) == (outcome["candidate"]["dtype"] == "int8")
    # the recommendation is a table that loads, with the runtime's backend and artifact
    block = report.split("```toml\n")[1].split("```")[0]
    (config,) = parse_models(tomllib.loads(block), source=root / "models.toml")
    pick = candidates[results["pick"]]["candidate"]
    assert config.backend == ("onnx-classifier" if pick["runtime"] == "onnxruntime" else "transformer")
    if pick["runtime"] == "onnxruntime":
        assert str(config.path) == graphs["float32"]["path"]
    assert "quantize" not in config.options and "dtype" not in config.options


def test_the_drift_figures_are_recomputed_from_the_outputs_results_json_keeps(
        run: tuple[int, Path, Path]) -> None:
    _, out, _ = run
    results = results_of(out)
    accuracy = results["accuracy"]
    reference = np.asarray(accuracy["reference_outputs"])
    assert reference.shape[0] == len(TEXTS) and reference.shape[1] > 1  # every text, each label's
    assert np.allclose(reference.sum(axis=1), 1.0)
    for outcome in results["candidates"]:
        if outcome["outputs"] is None:
            continue  # not started: another of its variant was left out
        recomputed = DRIFTS[accuracy["measure"]](reference, np.asarray(outcome["outputs"]))
        assert recomputed == outcome["drift"]


def test_what_cannot_be_searched_is_refused_before_anything_starts(
        tmp_path: Path, transformer_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_models(tmp_path / "models.toml", [
        {"name": "sentiment", "backend": "transformer", "path": str(transformer_dir)}])
    texts = tmp_path / "texts.json"
    texts.write_text(json.dumps(TEXTS), encoding="utf-8")
    base = ["recommend", "--config", str(config), "--model", "sentiment", "--inputs", str(texts),
            "--slo-p99-ms", "100", "--out", str(tmp_path / "out"), "--no-progress"]
    refusals = {
        ("--runtimes", "torch,onnxruntime", "--max-drift", "cosine=0.9"):
            "a classifier's drift is measured as top1 and shift",
        ("--max-drift", "top1=0.9"): "--max-drift bounds the drift of a model with runtimes",
        ("--runtimes", "onnxruntime", "--onnx", "float32=missing"):
            "--onnx float32=missing: no such file or folder",
        ("--runtimes", "torch", "--hardware", str(config)): "--runtimes and --max-drift search one machine",
    }
    for flags, message in refusals.items():
        assert main([*base, *flags]) == 2, flags
        assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "results.json").exists()
