"""The config-only estimate against inspect's measurement, on the models batchserve serves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from batchserve_planning.estimate_check import MARGIN, MARGIN_FROM_BYTES

from tests.support import inspect_json, write_models


def _check(estimate: dict[str, Any], measured_parameters: int) -> list[dict[str, Any]]:
    assert estimate["parameters"] == measured_parameters == estimate["measured_parameters"]
    rows: list[dict[str, Any]] = estimate["activations"]
    compared = [row for row in rows if row["measured_bytes"] >= MARGIN_FROM_BYTES]
    assert compared, rows
    for row in compared:
        assert abs(row["estimate_bytes"] / row["measured_bytes"] - 1) <= MARGIN, row
        assert row["within_margin"] is True
    return rows


def test_transformer_estimate_within_the_margin_of_the_measured_peak(tmp_path: Path,
                                                                     transformer_dir: Path) -> None:
    config = write_models(tmp_path / "models.toml", [
        {"name": "sentiment", "backend": "transformer", "path": str(transformer_dir),
         "max_batch_size": 32, "options": {"max_length": 128, "torch_threads": 1}}])
    report = inspect_json("sentiment", "--config", str(config), "--batch-sizes", "none",
                           "--input-sizes", "128", "--input-batch-sizes", "8,32")
    rows = _check(report["config_estimate"], report["size"]["parameters"])
    assert [(r["tokens"], r["batch_size"], r["forward_tokens"]) for r in rows] == [(128, 8, 1024),
                                                                                  (128, 32, 4096)]
    assert report["config_estimate"]["config"] == str(transformer_dir / "config.json")


def test_embedding_estimate_follows_the_token_budget(tmp_path: Path, minilm_dir: Path) -> None:
    config = write_models(tmp_path / "models.toml", [
        {"name": "minilm", "backend": "embedding", "path": str(minilm_dir), "max_batch_size": 32,
         "options": {"max_batch_tokens": 2048, "torch_threads": 1}}])
    report = inspect_json("minilm", "--config", str(config), "--batch-sizes", "none",
                           "--input-sizes", "256", "--input-batch-sizes", "8,16")
    rows = _check(report["config_estimate"], report["size"]["parameters"])
    # 16 texts of 256 tokens are two forward calls of 8 under a budget of 2,048 tokens
    assert [(r["batch_size"], r["forward_tokens"]) for r in rows] == [(8, 2048), (16, 2048)]


def test_resnet50_architecture_run_on_the_meta_device(tmp_path: Path, resnet_weights: Path) -> None:
    config = write_models(tmp_path / "models.toml", [
        {"name": "resnet50", "backend": "resnet50", "path": str(resnet_weights), "max_batch_size": 1,
         "options": {"torch_threads": 1}}])
    report = inspect_json("resnet50", "--config", str(config), "--batch-sizes", "1,2",
                           "--input-sizes", "none")
    rows = _check(report["config_estimate"], 25_557_032)
    # the forward pass on the meta device against the measured peak of predict_batch
    assert [(r["batch_size"], r["measured_bytes"]) for r in rows] == [
        (row["batch_size"], row["activation_bytes"]) for row in report["memory"]]
