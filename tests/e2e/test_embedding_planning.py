"""``batchserve inspect`` and ``batchserve recommend`` on the embedding model (all-MiniLM-L6-v2),
with texts from a file, one per line, as a user sizing a RAG embedding service would give them."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from batchserve.cli import main

from tests.support import inspect_json, recommend_status, running_server, write_models
from tests.support.hogs import spinning
from tests.support.texts import NON_ASCII, QUERIES, passages

MINILM_PARAMETERS = 22.7e6
"""all-MiniLM-L6-v2's size as sentence-transformers' model card gives it (22.7 M)."""
TEXTS = [*QUERIES[:4], *NON_ASCII[:2], *passages(2)]


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    return write_models(tmp_path_factory.mktemp("minilm-planning") / "models.toml", [
        {"name": "minilm", "backend": "embedding", "path": str(minilm_dir), "max_batch_size": 4,
         "max_wait_ms": 0, "timeout_ms": 30000, "options": {"max_batch_tokens": 1024, "torch_threads": 1}},
    ])


@pytest.fixture(scope="module")
def texts_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One text per line, with a blank line among them (skipped, not an empty text)."""
    assert all("\n" not in text for text in TEXTS)
    path = tmp_path_factory.mktemp("texts") / "texts.txt"
    path.write_text("\n".join([*TEXTS[:3], "", *TEXTS[3:]]) + "\n", encoding="utf-8")
    return path


def _check_size(size: dict[str, Any]) -> None:
    assert size["kind"] == "torch"
    assert size["parameters"] == pytest.approx(MINILM_PARAMETERS, rel=0.005)
    assert size["weight_bytes"]["float32"] == 4 * size["parameters"]
    assert size["weight_bytes"]["float16"] == 2 * size["parameters"]


def test_inspect_with_texts_from_a_file(repository: Path, texts_file: Path) -> None:
    report = inspect_json("minilm", "--config", str(repository), "--inputs", str(texts_file),
                      "--batch-sizes", "1,4")
    _check_size(report["size"])
    assert report["backend"] == "embedding" and report["device"] == "cpu"
    assert report["inputs"] == f"{len(TEXTS)} samples from {texts_file}"  # the blank line is skipped
    assert [row["batch_size"] for row in report["memory"]] == [1, 4]
    for row in report["memory"]:
        assert row["activation_bytes"] > 0 and row["rows_per_s"] > 0


def test_inspect_with_the_backends_own_sample(repository: Path) -> None:
    report = inspect_json("minilm", "--config", str(repository), "--batch-sizes", "2")
    _check_size(report["size"])
    assert "truncated at max_length (256 tokens)" in report["inputs"]  # sentence_bert_config.json's
    assert [row["batch_size"] for row in report["memory"]] == [2]


def test_a_tiny_recommend_picks_a_configuration_that_answers_vectors(repository: Path, texts_file: Path,
                                                                      tmp_path: Path) -> None:
    out = tmp_path / "report"
    code = main(["recommend", "--config", str(repository), "--model", "minilm", "--inputs", str(texts_file),
                 "--slo-p99-ms", "5000", "--max-batch-cap", "2", "--max-wait-ms", "0", "--instances", "1",
                     "--workers", "1",
                 "--budget-s", "120", "--max-concurrency", "4", "--step-s", "0.3", "--max-step-s", "1",
                 "--min-responses", "20", "--out", str(out), "--no-progress"])
    assert code == recommend_status(out)
    results = json.loads((out / "results.json").read_text())
    _check_size(results["model_size"])
    # the configured size (4, within the cap of 2) first, then the ladder down to batch 1, which
    # the 120-s budget may leave out (the checks' reserve counts their back-off)
    ran = [c["candidate"]["max_batch_size"] for c in results["candidates"]]
    skipped = [label.split(",")[0] for label in results["skipped"]]
    assert ran == [2, 1] or (ran == [2] and skipped == ["batch 1"]), (ran, results["skipped"])
    for outcome in results["candidates"]:
        assert outcome["error"] is None
        assert outcome["steps"] and all(step["error_rate"] == 0 for step in outcome["steps"])
    assert results["pick"] is not None
    assert results["verification"]["measured_error_rate"] == 0
    assert "22,713,216 parameters" in (out / "report.md").read_text()

    # The pick, served, answers each text of the file with a unit vector of 384 values, on the
    # route sizing measured and on the OpenAI route.
    chosen = results["candidates"][results["pick"]]["candidate"]
    table = {**results["model_table"], **{key: chosen[key] for key in ("max_batch_size", "max_wait_ms",
                                                                       "instances")}}
    (tmp_path / "picked").mkdir()
    config = write_models(tmp_path / "picked" / "models.toml", [table], root=repository.parent.parent)
    with running_server(config) as server:
        predicted = httpx.post(f"{server.url}/predict/minilm", json={"inputs": TEXTS}, timeout=60)
        openai = httpx.post(f"{server.url}/v1/embeddings", json={"model": "minilm", "input": TEXTS},
                            timeout=60)
    assert predicted.status_code == 200 and openai.status_code == 200, (predicted.text, openai.text)
    vectors = np.array(predicted.json()["outputs"])
    assert vectors.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    same = np.array([item["embedding"] for item in openai.json()["data"]])
    np.testing.assert_allclose(same, vectors, atol=1e-5)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one core: one torch thread already")
def test_beside_other_work_the_candidates_torch_threads_are_the_cores_it_leaves(
        minilm_dir: Path, texts_file: Path, tmp_path: Path) -> None:
    # The table leaves torch_threads to the server, which would take every core of its affinity.
    config = write_models(tmp_path / "models.toml", [
        {"name": "minilm", "backend": "embedding", "path": str(minilm_dir), "max_batch_size": 2,
         "max_wait_ms": 0, "timeout_ms": 30000, "options": {"max_batch_tokens": 1024}}])
    out = tmp_path / "report"
    cores = len(os.sched_getaffinity(0))
    with spinning(cores):  # one process spinning on each core, outside recommend's tree
        code = main(["recommend", "--config", str(config), "--model", "minilm", "--inputs", str(texts_file),
                     "--slo-p99-ms", "10000", "--max-batch-cap", "1", "--max-wait-ms", "0",
                     "--instances", "1", "--workers", "1", "--budget-s", "60", "--max-concurrency", "2",
                     "--step-s", "0.3", "--max-step-s", "1", "--min-responses", "10", "--out", str(out),
                     "--no-progress"])
    assert code == recommend_status(out)
    results = json.loads((out / "results.json").read_text())
    threads = {c["candidate"]["torch_threads"] for c in results["candidates"]}
    # Every core kept busy: each candidate gets one thread (at most the cores the probe saw left),
    # where torch would take them all.
    assert threads and all(t is not None and t < cores for t in threads), threads
    assert any("torch's threads are set to the" in d for d in results["decisions"]), results["decisions"]
    if results["pick"] is not None:  # the table served is the one measured
        assert "torch_threads = " in (out / "report.md").read_text()
