"""``batchserve loadtest`` takes the sample inputs a model can use, as the server declares its input
kind at ``GET /models/{name}``, and refuses unusable ones up front (exit 2) saying what it found."""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sklearn.datasets
from batchserve.cli import main
from batchserve_planning.input_kinds import input_kind_of_table
from batchserve_planning.load.inputs import server_input_kind

from tests.support import ServerProcess, running_server, write_models

PHOTOS = Path(os.path.dirname(sklearn.datasets.__file__)) / "images"
"""scikit-learn's sample images: china.jpg and flower.jpg beside README.txt and __init__.py, the
folder a new user tried (``loadtest --inputs``: 14 of its 16 samples were README's lines)."""


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory, resnet_weights: Path, diabetes_path: Path,
           transformer_dir: Path, minilm_dir: Path) -> Path:
    return write_models(tmp_path_factory.mktemp("input-kinds") / "models.toml", [
        {"name": "resnet50", "backend": "resnet50", "path": str(resnet_weights), "max_batch_size": 2},
        {"name": "diabetes", "backend": "sklearn", "path": str(diabetes_path)},
        {"name": "sentiment", "backend": "transformer", "path": str(transformer_dir)},
        {"name": "minilm", "backend": "embedding", "path": str(minilm_dir)},
        {"name": "echo", "backend": "echo", "path": "unused"},
    ])


@pytest.fixture(scope="module")
def server(config: Path) -> Iterator[ServerProcess]:
    with running_server(config) as process:
        yield process


def _loadtest(server: ServerProcess, tmp_path: Path, model: str, inputs: Path) -> tuple[int, dict[str, Any]]:
    out = tmp_path / "report"
    code = main(["loadtest", "--url", server.url, "--model", model, "--inputs", str(inputs),
                 "--out", str(out), "--requests", "6", "--concurrency", "2", "--warmup-s", "0",
                 "--no-progress"])
    report = json.loads((out / "report.json").read_text()) if code == 0 else {}
    return code, report


def test_the_server_and_the_repository_file_declare_the_same_input_kind(server: ServerProcess,
                                                                        config: Path) -> None:
    tables = {t["name"]: t for t in tomllib.loads(config.read_text())["models"]}
    declared = {name: server_input_kind(server.url, name) for name in tables}
    assert declared == {"resnet50": "image", "diabetes": "rows", "sentiment": "text", "minilm": "text",
                        "echo": "json"}
    assert {name: input_kind_of_table(table) for name, table in tables.items()} == declared


def test_an_image_model_takes_only_the_images_of_a_folder(server: ServerProcess, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    code, report = _loadtest(server, tmp_path, "resnet50", PHOTOS)
    assert code == 0
    assert report["result"]["status_counts"] == {"200": 6}
    assert report["inputs"]["description"].startswith("2 samples (image)")
    err = capsys.readouterr().err
    assert "2 JPEG images" in err
    assert "skipped" in err and "1 text file (README.txt)" in err and "1 Python file (__init__.py)" in err


def test_a_folder_with_nothing_the_model_takes_is_refused_naming_what_was_found(
        server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = _loadtest(server, tmp_path, "diabetes", PHOTOS)
    assert code == 2
    err = capsys.readouterr().err
    assert "rows" in err and "2 JPEG images (china.jpg, flower.jpg)" in err
    assert "1 text file (README.txt)" in err and "1 Python file (__init__.py)" in err

    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "notes.txt").write_text("a line\n")
    (folder / "rows.json").write_text("[[1, 2], [3, 4]]")
    code, _ = _loadtest(server, tmp_path, "resnet50", folder)
    assert code == 2
    err = capsys.readouterr().err
    assert "image" in err and "1 text file (notes.txt)" in err and "1 JSON file of rows (rows.json)" in err


def test_a_single_file_of_the_wrong_kind_is_refused(server: ServerProcess, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert _loadtest(server, tmp_path, "resnet50", PHOTOS / "README.txt")[0] == 2
    assert "README.txt" in capsys.readouterr().err
    assert _loadtest(server, tmp_path, "diabetes", PHOTOS / "china.jpg")[0] == 2
    assert "china.jpg" in capsys.readouterr().err
    texts = tmp_path / "texts.json"
    texts.write_text(json.dumps(["one text", "another"]))
    assert _loadtest(server, tmp_path, "diabetes", texts)[0] == 2
    assert "texts.json" in capsys.readouterr().err


def test_a_rows_model_takes_a_json_file_of_rows(server: ServerProcess, tmp_path: Path,
                                                diabetes: tuple[np.ndarray, Any]) -> None:
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps(diabetes[0][:5].tolist()))
    code, report = _loadtest(server, tmp_path, "diabetes", rows)
    assert code == 0 and report["result"]["status_counts"] == {"200": 6}


@pytest.mark.parametrize("model", ["sentiment", "minilm"])
def test_a_text_model_takes_text_lines_and_json_lines(server: ServerProcess, tmp_path: Path,
                                                      model: str) -> None:
    lines = tmp_path / "texts.txt"
    lines.write_text("a fine day\n\nnot good at all\n")
    code, report = _loadtest(server, tmp_path, model, lines)
    assert code == 0 and report["result"]["status_counts"] == {"200": 6}
    assert report["inputs"]["description"].startswith("2 samples (text)")

    records = tmp_path / "texts.jsonl"
    records.write_text('"a fine day"\n{"text": "not good at all"}\n')
    code, report = _loadtest(server, tmp_path / "jsonl", model, records)
    assert code == 0 and report["result"]["status_counts"] == {"200": 6}
