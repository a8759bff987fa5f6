"""The transformer backend on the demo BERT classifier, built here from models/build_transformer.py.

Server outputs are checked against the same checkpoint run in-process the way transformers
users do it (tokenizer with padding, model, softmax), so a mistake in tokenising, padding,
masking, grouping or re-ordering shows up as a score mismatch.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from batchserve.backends.base import LoadError
from batchserve.backends.transformer import TransformerBackend
from batchserve.config import ModelConfig
from batchserve.metrics import Metrics
from fastapi.testclient import TestClient

from tests.support import ROOT, make_client, wait_ready

LABELS = ["negative", "neutral", "positive"]
TEXTS = [
    "great",
    "honestly, the battery of the zorvex broke after a week and I would buy again.",
    "the delivery arrived early",
    " ".join(["the camera of the kamidulu works beautifully and lasts for days."] * 8),
    "ok",
    "sadly, customer service is painfully slow (2 stars!)",
]
Reference = Callable[[list[str], int], list[list[float]]]


def _build_script() -> ModuleType:
    script = ROOT / "models" / "build_transformer.py"
    spec = importlib.util.spec_from_file_location("build_transformer", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def build_script() -> ModuleType:
    return _build_script()


@pytest.fixture(scope="session")
def demo_path(transformer_dir: Path) -> Path:
    import torch

    torch.set_num_threads(1)  # the test machine is shared; the model is tiny anyway
    return transformer_dir


@pytest.fixture(scope="session")
def reference(demo_path: Path) -> Reference:
    """Class probabilities from the checkpoint run directly with transformers, one padded batch."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_path)
    model = AutoModelForSequenceClassification.from_pretrained(demo_path).eval()

    def run(texts: list[str], max_length: int = 128) -> list[list[float]]:
        encoded = tokenizer(texts, padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt")
        with torch.inference_mode():
            logits = model(**encoded).logits
        probabilities: list[list[float]] = torch.softmax(logits.float(), dim=-1).tolist()
        return probabilities

    return run


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, demo_path: Path) -> Iterator[TestClient]:
    base = {"backend": "transformer", "path": str(demo_path), "max_batch_size": 8}
    with make_client(tmp_path_factory.mktemp("config"), [
        {**base, "name": "text", "max_wait_ms": 2, "options": {"torch_threads": 1}},
        {**base, "name": "short", "options": {"max_length": 16, "max_chars": 200,
                                              "length_grouping": False}},
        {**base, "name": "cuda", "device": "cuda"},
        {**base, "name": "half", "options": {"dtype": "float16"}},
        {**base, "name": "missing", "path": str(demo_path / "no-such-model")},
        {**base, "name": "too-long", "options": {"max_length": 1000}},
    ]) as client:
        wait_ready(client)
        yield client


def predict(client: TestClient, model: str, inputs: list[Any]) -> list[dict[str, Any]]:
    response = client.post("/predict", json={"model": model, "inputs": inputs})
    assert response.status_code == 200, response.text
    outputs: list[dict[str, Any]] = response.json()["outputs"]
    return outputs


def scores_of(outputs: list[dict[str, Any]]) -> list[list[float]]:
    return [[output["scores"][label] for label in LABELS] for output in outputs]


def assert_close(actual: list[list[float]], expected: list[list[float]], tolerance: float) -> None:
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected, strict=True):
        assert got == pytest.approx(want, abs=tolerance)


def load_backend(path: Path, metrics: Metrics | None = None, name: str = "t",
                 **options: Any) -> TransformerBackend:
    config = ModelConfig(name=name, backend="transformer", path=path,
                         options={"torch_threads": 1, **options})
    backend = TransformerBackend(config, None if metrics is None else metrics.for_model(name))
    backend.load("cpu")
    return backend


# -- through the server -------------------------------------------------------------------


def test_mixed_lengths_in_one_request_match_transformers(client: TestClient,
                                                         reference: Reference) -> None:
    outputs = predict(client, "text", TEXTS)
    assert_close(scores_of(outputs), reference(TEXTS, 128), 1e-5)


def test_concurrent_requests_match_transformers(client: TestClient, reference: Reference) -> None:
    requests = [TEXTS[i:i + 1 + i % 3] for i in range(len(TEXTS))] * 2
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda texts: predict(client, "text", texts), requests))
    expected = dict(zip(TEXTS, reference(TEXTS, 128), strict=True))
    for texts, outputs in zip(requests, answers, strict=True):
        assert_close(scores_of(outputs), [expected[text] for text in texts], 1e-5)


def test_output_is_the_argmax_label_and_a_probability_per_label(client: TestClient) -> None:
    for output in predict(client, "text", TEXTS):
        assert set(output) == {"label", "scores"}
        assert list(output["scores"]) == LABELS
        assert all(type(score) is float for score in output["scores"].values())
        assert sum(output["scores"].values()) == pytest.approx(1.0, abs=1e-6)
        assert output["label"] == max(output["scores"], key=output["scores"].__getitem__)
    described = client.get("/models/text").json()
    assert described["output"]["labels"] == LABELS
    assert described["input"]["max_length"] == 128


def test_object_items_equal_string_items(client: TestClient) -> None:
    plain = predict(client, "text", TEXTS[:3])
    wrapped = predict(client, "text", [{"text": text} for text in TEXTS[:3]])
    assert wrapped == plain


@pytest.mark.parametrize(("model", "item", "words"), [
    ("text", "", "item 1: text is empty"),
    ("text", " \n\t ", "item 1: text is empty"),
    ("text", 42, 'item 1: expected a string or {"text": string}, got int'),
    ("text", ["great"], 'item 1: expected a string or {"text": string}, got list'),
    ("text", {"text": None}, 'item 1: expected a string or {"text": string}, got NoneType'),
    ("text", {"text": "great", "lang": "en"}, "item 1: unknown keys ['lang']"),
    ("text", {}, "item 1: missing key 'text'"),
    ("short", "a" * 201, "item 1: text has 201 characters; this model accepts at most 200 (max_chars)"),
])
def test_invalid_item_is_a_400_naming_the_item(client: TestClient, model: str, item: object,
                                               words: str) -> None:
    response = client.post("/predict", json={"model": model, "inputs": ["fine", item]})
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith(words)


def test_long_texts_are_truncated_like_transformers_does(client: TestClient,
                                                         reference: Reference) -> None:
    short_max = " ".join(f"the zorvex number {n} is okay" for n in range(6))  # 180 chars, > 40 tokens
    texts = [short_max, "a" * 200, "great"]
    assert_close(scores_of(predict(client, "short", texts)), reference(texts, 16), 1e-5)
    long = " ".join(f"the zorvex number {n} is okay" for n in range(60))  # > 300 tokens
    texts = [long, "great"]
    assert_close(scores_of(predict(client, "text", texts)), reference(texts, 128), 1e-5)


def test_padding_ratio_is_exported(client: TestClient) -> None:
    predict(client, "text", TEXTS)
    metrics = client.get("/metrics").text
    count = next(line for line in metrics.splitlines()
                 if line.startswith('batchserve_padding_ratio_count{model="text"}'))
    assert float(count.rsplit(" ", 1)[1]) >= 1


def test_load_failures_give_a_reason(client: TestClient) -> None:
    import torch

    states = client.get("/readyz").json()["models"]
    assert states["text"]["state"] == "ready"
    assert states["half"]["state"] == "failed"
    assert "dtype 'float16' runs on GPU only" in states["half"]["reason"]
    assert states["missing"]["state"] == "failed"
    assert "model folder not found" in states["missing"]["reason"]
    assert "save_pretrained" in states["missing"]["reason"]
    assert "max_position_embeddings" in states["too-long"]["reason"]
    if not torch.cuda.is_available():
        assert states["cuda"]["state"] == "failed"
        assert "CUDA" in states["cuda"]["reason"]


# -- the backend on its own -----------------------------------------------------------------


def mixed_batch(backend: TransformerBackend) -> list[Any]:
    """Short and long rows interleaved, so that one padded group would be mostly padding."""
    texts = [" ".join(["the app of the zorvex is okay"] * repeat) for repeat in (1, 14, 1, 12, 2, 20)]
    return [backend.preprocess(text, None) for text in texts]


def test_batch_tokenizing_equals_transformers_tokenizer(demo_path: Path) -> None:
    from transformers import AutoTokenizer

    backend = load_backend(demo_path, max_length=24)
    texts = [" ".join(["the app of the zorvex is okay"] * repeat) for repeat in (1, 14, 2)] + ["ok"]
    expected = AutoTokenizer.from_pretrained(demo_path)(texts, truncation=True, max_length=24)
    assert backend.tokenize(texts) == expected["input_ids"]
    assert max(len(ids) for ids in backend.tokenize(texts)) == 24


def test_length_grouping_changes_padding_not_scores(demo_path: Path) -> None:
    metrics = Metrics(max_batch_size=32)
    grouped = load_backend(demo_path, metrics, "grouped")
    arrival = load_backend(demo_path, metrics, "arrival", length_grouping=False)
    rows = mixed_batch(grouped)
    lengths = [len(ids) for ids in grouped.tokenize(rows)]
    assert max(lengths) > 4 * min(lengths)
    assert_close(scores_of(grouped.predict_batch(rows)), scores_of(arrival.predict_batch(rows)), 1e-5)

    def padding(name: str) -> tuple[float, float]:
        """Sum and count of the model's padding-ratio histogram."""
        labels = {"model": name, "version": ""}  # the raw registry: the label is there
        values = [metrics.registry.get_sample_value(f"batchserve_padding_ratio_{part}", labels)
                  for part in ("sum", "count")]
        assert values[0] is not None and values[1] is not None
        return values[0], values[1]

    expected = sum(max(lengths) - n for n in lengths) / (max(lengths) * len(lengths))
    arrival_sum, arrival_count = padding("arrival")
    assert arrival_sum == pytest.approx(expected)
    assert arrival_count == 1.0
    grouped_sum, grouped_count = padding("grouped")
    assert grouped_count == 1.0
    assert grouped_sum < expected / 2


def test_int8_quantized_model_mostly_agrees_with_float32(demo_path: Path, build_script: ModuleType,
                                                        ) -> None:
    full = load_backend(demo_path)
    quantized = load_backend(demo_path, quantize="int8")
    kinds = {type(module).__module__ for module in quantized._model.modules()
             if type(module).__name__ == "Linear"}
    assert kinds == {"torch.ao.nn.quantized.dynamic.modules.linear"}  # no float Linear left
    texts = list(build_script.sentences(60, seed=7))
    expected = full.predict_batch([full.preprocess(text, None) for text in texts])
    actual = quantized.predict_batch([quantized.preprocess(text, None) for text in texts])
    assert_close(scores_of(actual), scores_of(expected), 0.02)  # measured: at most 0.0157
    # a bound that tells texts apart: the next text's scores are off by more on most texts
    # (by more than 0.02 on 38 of the 60, measured)
    shifted = scores_of(expected[1:] + expected[:1])
    assert sum(max(abs(a - b) for a, b in zip(got, other, strict=True)) > 0.02
               for got, other in zip(scores_of(actual), shifted, strict=True)) >= 30
    agreed = sum(a["label"] == e["label"] for a, e in zip(actual, expected, strict=True))
    assert agreed >= 0.8 * len(texts)  # measured: 57 of 60
    clear = 0
    for a, e in zip(actual, expected, strict=True):
        ranked = sorted(e["scores"].values())
        if ranked[-1] - ranked[-2] > 0.05:  # a clear winner survives quantisation
            clear += 1
            assert a["label"] == e["label"]
    assert clear >= 5  # the check above is not vacuous (14 of 60 measured)


def test_warmup_runs_every_batch_size_without_recording_padding(demo_path: Path) -> None:
    metrics = Metrics(max_batch_size=4)
    backend = load_backend(demo_path, metrics, "warm")
    backend.warmup()
    count = metrics.registry.get_sample_value("batchserve_padding_ratio_count",
                                              {"model": "warm", "version": ""})
    assert count == 0.0


def test_a_file_instead_of_a_folder_is_a_load_error(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(LoadError, match="is a file, not a folder"):
        load_backend(tmp_path / "model.safetensors")
    with pytest.raises(LoadError, match="cannot load a tokenizer"):
        load_backend(tmp_path)


def test_importing_the_backend_does_not_import_torch() -> None:
    code = ("import sys, batchserve.backends.transformer; "
            "sys.exit('torch' in sys.modules or 'transformers' in sys.modules)")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_build_is_deterministic(build_script: ModuleType) -> None:
    assert build_script.train_vocab() == build_script.train_vocab()
    assert 2000 <= len(build_script.train_vocab()) <= 5000


# -- on a GPU -------------------------------------------------------------------------------


@pytest.mark.gpu
def test_float16_on_gpu_is_close_to_float32_on_cpu(demo_path: Path) -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    cpu = load_backend(demo_path)
    config = ModelConfig(name="g", backend="transformer", path=demo_path, device="cuda",
                         options={"dtype": "float16"})
    gpu = TransformerBackend(config)
    gpu.load("cuda")
    gpu.warmup()
    rows = mixed_batch(cpu)
    assert_close(scores_of(gpu.predict_batch(rows)), scores_of(cpu.predict_batch(rows)), 0.02)
    gpu.unload()
    quantized = TransformerBackend(config.model_copy(update={"options": {"quantize": "int8"}}))
    with pytest.raises(LoadError, match="CPU only"):
        quantized.load("cuda")
