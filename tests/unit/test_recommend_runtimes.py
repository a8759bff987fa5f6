"""``recommend --runtimes``: which runtimes and precisions become candidates, the ``[[models]]``
table each renders, and ``--max-drift``'s names."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
from batchserve.config import parse_models
from batchserve_planning.accuracy import parse_limits
from batchserve_planning.candidates import Candidate, Variant
from batchserve_planning.runtimes import with_runtimes

TRANSFORMER: dict[str, Any] = {"name": "sentiment", "backend": "transformer", "path": "artifacts/transformer",
               "sha256": "ab" * 32, "options": {"max_length": 128, "quantize": "none", "torch_threads": 2}}
RESNET: dict[str, Any] = {"name": "resnet50", "backend": "resnet50", "path": "artifacts/resnet50.safetensors",
          "options": {"weights": "file", "top_k": 5}}


def args(runtimes: str | None = "torch,onnxruntime", dtypes: str | None = None,
         onnx: dict[str, str] | None = None) -> argparse.Namespace:
    return argparse.Namespace(runtimes=runtimes, dtypes=dtypes, onnx=onnx, config=Path("models.toml"))


def variants(base: dict[str, Any], devices: list[str], **kw: Any) -> set[tuple[str, str | None, str | None]]:
    found = with_runtimes(args(**kw), base, [Variant(d, "float32") for d in devices])
    return {(v.device, v.runtime, v.dtype) for v in found}


def test_each_runtime_at_each_precision_it_has_on_the_device() -> None:
    # the transformer quantises itself (options.quantize); resnet50's torch backend has no int8
    assert variants(TRANSFORMER, ["cpu"]) == {("cpu", "torch", "float32"), ("cpu", "torch", "int8"),
                                              ("cpu", "onnxruntime", "float32"),
                                              ("cpu", "onnxruntime", "int8")}
    assert variants(RESNET, ["cpu"]) == {("cpu", "torch", "float32"), ("cpu", "onnxruntime", "float32"),
                                         ("cpu", "onnxruntime", "int8")}
    # on a GPU: torch's float16 (as without --runtimes), no int8
    assert variants(RESNET, ["cuda"]) == {("cuda", "torch", "float32"), ("cuda", "torch", "float16"),
                                          ("cuda", "onnxruntime", "float32")}
    assert variants(TRANSFORMER, ["cpu"], runtimes="onnxruntime", dtypes="int8") == {
        ("cpu", "onnxruntime", "int8")}


def test_without_runtimes_the_combos_are_as_before() -> None:
    combos = [Variant("cpu", "float32")]
    assert with_runtimes(args(runtimes=None), TRANSFORMER, combos) == combos


@pytest.mark.parametrize(("kw", "base", "message"), [
    ({"runtimes": "tensorrt"}, TRANSFORMER, "--runtimes: unknown tensorrt"),
    ({}, {"name": "d", "backend": "sklearn", "path": "d.joblib"}, "the sklearn backend has no ONNX preset"),
    ({"dtypes": "int4"}, TRANSFORMER, "--dtypes int4: choose from"),
    ({"runtimes": None, "onnx": {"int8": "x"}}, TRANSFORMER, "--onnx gives graphs for --runtimes"),
])
def test_what_cannot_be_searched_is_refused_saying_why(kw: dict[str, Any], base: dict[str, Any],
                                                       message: str) -> None:
    with pytest.raises(ValueError, match=message):
        with_runtimes(args(**kw), base, [Variant("cpu", "float32")])


def test_an_onnxruntime_candidate_renders_the_preset_backend_and_its_graph(tmp_path: Path) -> None:
    graph = tmp_path / "sentiment-int8"
    graph.mkdir()
    candidate = Candidate(8, 0.0, 2, "cpu", "int8", torch_threads=1, runtime="onnxruntime", graph=str(graph))
    table = candidate.table(TRANSFORMER)
    assert table["backend"] == "onnx-classifier" and table["path"] == str(graph)
    assert "sha256" not in table  # the torch artifact's pin is not the graph's
    assert table["options"] == {"max_length": 128, "intra_op_threads": 1}
    (config,) = parse_models({"models": [table]}, source=tmp_path / "models.toml")
    assert config.backend == "onnx-classifier"
    assert candidate.label().endswith("onnxruntime int8")


def test_a_torch_candidate_renders_its_precision_as_the_backend_takes_it() -> None:
    int8 = Candidate(8, 0.0, 1, "cpu", "int8", runtime="torch").table(TRANSFORMER)
    assert int8["backend"] == "transformer" and int8["options"]["quantize"] == "int8"
    assert "dtype" not in int8["options"]
    reference = Candidate(1, 0.0, 1, "cpu", "float32", runtime="torch").table(
        {**TRANSFORMER, "options": {"quantize": "int8"}})
    assert "quantize" not in reference.get("options", {})  # the reference is float32 whatever is configured
    half = Candidate(8, 0.0, 1, "cuda", "float16", runtime="torch").table(TRANSFORMER)
    assert half["options"]["dtype"] == "float16"


def test_max_drift_names_a_measure_of_the_models_kind() -> None:
    assert parse_limits("top1=0.98,shift=0.05", "classifier") == {"top1": 0.98, "shift": 0.05}
    assert parse_limits("cosine=0.99", "embedding") == {"cosine": 0.99}
    assert parse_limits(None, None) == {}
    with pytest.raises(ValueError, match="a embedding's drift is measured as cosine"):
        parse_limits("top1=0.9", "embedding")
    with pytest.raises(ValueError, match="unknown measure 'cos'"):
        parse_limits("cos=0.9", "embedding")
    with pytest.raises(ValueError, match="'high' is not a number"):
        parse_limits("cosine=high", "embedding")
    with pytest.raises(ValueError, match="--max-drift bounds the drift of a model with runtimes"):
        parse_limits("cosine=0.9", None)
