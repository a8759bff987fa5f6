"""Sample inputs chosen by the model's input kind (``load_samples(path, kind)``), in-process."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from batchserve_planning.input_kinds import input_kind_of_table
from batchserve_planning.load.inputs import InputError, load_samples

PNG = base64.b64decode(  # a 1x1 PNG
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """One file of each kind, and two that are no samples at all."""
    (tmp_path / "photo.png").write_bytes(PNG)
    (tmp_path / "rows.json").write_text(json.dumps([[1, 2], {"a": 3}]))
    (tmp_path / "texts.jsonl").write_text('"first"\n{"text": "second"}\n')
    (tmp_path / "lines.txt").write_text("third\n\nfourth\n")
    (tmp_path / "numbers.jsonl").write_text("1.5\n2.5\n")
    (tmp_path / "setup.py").write_text("print()\n")
    (tmp_path / "sub").mkdir()
    return tmp_path


def _take(path: Path, kind: str) -> tuple[list[object], list[str]]:
    notes: list[str] = []
    samples = load_samples(path, kind, on_skip=notes.append)
    return [s.item for s in samples], notes


def test_each_kind_takes_only_its_files_and_says_what_it_skipped(folder: Path) -> None:
    items, notes = _take(folder, "image")
    assert items == [PNG]
    assert len(notes) == 1 and "took 1 PNG image (photo.png)" in notes[0]
    assert "1 Python file (setup.py)" in notes[0] and "1 folder (sub)" in notes[0]
    assert "1 JSON file of rows (rows.json)" in notes[0] and "1 text file (lines.txt)" in notes[0]

    items, notes = _take(folder, "text")
    assert items == ["third", "fourth", "first", {"text": "second"}]  # files by name
    assert "took 1 text file (lines.txt), 1 JSON lines file of text (texts.jsonl);" in notes[0]
    assert "1 JSON lines file of other values (numbers.jsonl)" in notes[0]

    assert _take(folder, "rows")[0] == [[1, 2], {"a": 3}]
    # "json" (a backend of its own item shape): every JSON file, whatever its items
    assert _take(folder, "json")[0] == [1.5, 2.5, [1, 2], {"a": 3}, "first", {"text": "second"}]


def test_nothing_of_the_kind_is_refused_saying_what_was_found(tmp_path: Path) -> None:
    for index in range(5):
        (tmp_path / f"photo{index}.jpg").write_bytes(b"not decoded here")
    (tmp_path / "README.txt").write_text("about the photos\n")
    with pytest.raises(InputError) as refused:
        load_samples(tmp_path, "rows")
    message = str(refused.value)
    assert "nothing in this folder is rows input" in message
    assert "1 text file (README.txt)" in message
    assert "5 JPEG images (photo0.jpg, photo1.jpg, photo2.jpg and 2 more)" in message
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="found nothing"):
        load_samples(tmp_path / "empty", "image")


def test_a_file_of_another_kind_or_of_mixed_items_is_refused(folder: Path) -> None:
    with pytest.raises(InputError, match=r"texts.jsonl: a JSON lines file of text, not rows input"):
        load_samples(folder / "texts.jsonl", "rows")
    with pytest.raises(InputError, match=r"photo.png: a PNG image, not text input"):
        load_samples(folder / "photo.png", "text")
    (folder / "mixed.json").write_text(json.dumps([[1, 2], "a text"]))
    with pytest.raises(InputError, match=r"mixed.json: mixes rows, text items"):
        load_samples(folder / "mixed.json", "rows")
    with pytest.raises(InputError, match=r"mixed.json: mixes rows, text items"):
        load_samples(folder, "text")  # in a folder too: the file is meant for this model, half wrong
    assert _take(folder, "image")[0] == [PNG]  # but not where it holds no item of the kind


def test_images_as_base64_json_items_are_image_input(tmp_path: Path) -> None:
    path = tmp_path / "images.jsonl"
    path.write_text(json.dumps({"b64": base64.b64encode(PNG).decode()}) + "\n")
    assert len(load_samples(path, "image")) == 1


def test_text_that_is_not_utf8_is_refused_with_its_name(tmp_path: Path) -> None:
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"latin1.txt: not UTF-8 text"):
        load_samples(tmp_path, "text")


def test_the_repository_tables_input_kind_is_its_backends_declaration() -> None:
    tables = {"sklearn": "rows", "xgboost": "rows", "lightgbm": "rows", "resnet50": "image",
              "transformer": "text", "embedding": "text", "echo": "json"}  # echo: the test plugin
    assert {b: input_kind_of_table({"name": "m", "backend": b, "path": "x"}) for b in tables} == tables
    with pytest.raises(LookupError, match="unknown backend"):
        input_kind_of_table({"name": "m", "backend": "nonesuch", "path": "x"})
