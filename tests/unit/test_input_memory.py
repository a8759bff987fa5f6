"""Inputs of a chosen size for the memory-by-input measurement (backends/sized_samples.py) and
the planner's side of it (batchserve_planning/input_memory.py). The measurement itself runs in
its own process (tests/e2e/test_inspect.py): it resets the peak resident set of its process."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from batchserve.backends import backend_class, sized_samples
from batchserve.backends.capabilities import SizedInputs
from batchserve.backends.transformer import TransformerBackend
from batchserve.config import ModelConfig
from batchserve_planning.input_memory import default_batch_sizes, memory_by_input, parse_sizes
from PIL import Image


@pytest.mark.parametrize(("name", "sized"), [
    ("resnet50", True), ("transformer", True), ("embedding", True),
    ("sklearn", False), ("xgboost", False), ("lightgbm", False),
])
def test_which_backends_have_sized_inputs(name: str, sized: bool) -> None:
    assert issubclass(backend_class(name), SizedInputs) is sized


@pytest.mark.parametrize("side", [224, 512, 1024])
def test_photos_are_jpegs_of_that_longer_side_with_the_photos_aspect(side: int) -> None:
    samples = sized_samples.photos(side)
    sources = sized_samples.sample_photos()
    assert len(samples.items) == len(sources) >= 2
    for data, source in zip(samples.items, sources, strict=True):
        with Image.open(io.BytesIO(data)) as image, Image.open(source) as original:
            assert image.format == "JPEG" and image.mode == "RGB"
            assert max(image.size) == side
            assert abs(image.width / image.height - original.width / original.height) < 0.01
        assert f"{source.name} {image.width}x{image.height}" in samples.description
    with pytest.raises(ValueError, match="16 to 16384 px"):
        sized_samples.photos(8)


def test_texts_have_the_tokens_asked_for(transformer_dir: Path) -> None:
    config = ModelConfig(name="t", backend="transformer", path=transformer_dir,
                         options={"max_length": 96})
    backend = TransformerBackend(config)
    backend.load("cpu")
    try:
        declared = backend.input_sizes()
        assert (declared.kind, declared.unit, declared.sizes) == ("text", "tokens", [16, 64, 96])
        for size in declared.sizes:
            sample = backend.sized_items(size)
            tokens = len(backend.tokenize(sample.items)[0])
            # as many as the words allow: one more word would pass the size
            assert size - 3 <= tokens <= size and sample.description.startswith(f"{tokens} tokens")
        assert len(backend.tokenize(backend.sized_items(96).items)[0]) == 96  # max_length: cut there
        with pytest.raises(ValueError, match="1 to 96 tokens"):
            backend.sized_items(97)
    finally:
        backend.unload()


def test_batch_sizes_and_size_lists() -> None:
    assert default_batch_sizes(1) == [1]
    assert default_batch_sizes(2) == [1, 2]
    assert default_batch_sizes(8) == [1, 8]
    assert default_batch_sizes(32) == [1, 8, 32]
    assert parse_sizes("auto") is None and parse_sizes("none") == []
    assert parse_sizes("1024,224,224") == [224, 1024]
    for bad in ("0,8", "a,b", ""):
        with pytest.raises(ValueError):
            parse_sizes(bad)


def test_a_backend_without_sized_inputs_has_no_table(diabetes_path: Path) -> None:
    backend = backend_class("sklearn")(ModelConfig(name="d", backend="sklearn", path=diabetes_path))
    backend.load("cpu")
    assert memory_by_input(backend, "cpu", None, [1, 8]) is None
