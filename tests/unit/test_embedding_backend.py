"""The embedding backend on all-MiniLM-L6-v2 against sentence-transformers' own ``encode`` of the
same folder, in-process: a mistake in tokenising, truncation, padding, masking, pooling,
normalisation, grouping or re-ordering shows as a vector that points elsewhere."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from batchserve.backends.base import LoadError
from batchserve.backends.embedding import EmbeddingBackend
from batchserve.backends.embedding_requests import Passage
from batchserve.backends.text import length_groups
from batchserve.config import ModelConfig
from batchserve.errors import InvalidInput

from tests.support.texts import PARAPHRASES, mixed_texts

PARITY = 0.9999


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)  # the test machine is shared


def load(path: Path, **options: Any) -> EmbeddingBackend:
    backend = EmbeddingBackend(ModelConfig(name="m", backend="embedding", path=path,
                                           max_batch_size=8, options=options))
    backend.load("cpu")
    return backend


def embed(backend: EmbeddingBackend, texts: list[str], dimensions: int | None = None) -> np.ndarray:
    return np.array(backend.predict_batch([Passage(text, dimensions) for text in texts]))


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))


@pytest.fixture(scope="module")
def minilm(minilm_dir: Path) -> EmbeddingBackend:
    return load(minilm_dir)


@pytest.fixture(scope="module")
def reference(minilm_dir: Path) -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_dir), device="cpu", local_files_only=True)


@pytest.fixture(scope="module")
def expected(reference: Any) -> dict[str, np.ndarray]:
    texts = mixed_texts()
    return dict(zip(texts, reference.encode(texts, batch_size=16), strict=True))


def test_the_texts_cover_truncation(reference: Any) -> None:
    texts = mixed_texts()
    lengths = [len(reference.tokenizer(text)["input_ids"]) for text in texts]
    assert len(texts) >= 50 and max(lengths) > 256 and min(lengths) <= 5
    assert sum(length > 256 for length in lengths) >= 5


def test_folder_settings_are_read(minilm: EmbeddingBackend) -> None:
    assert (minilm.size, minilm.max_length) == (384, 256)
    assert (minilm._layout.pooling, minilm._layout.normalize) == ("mean", True)


@pytest.mark.parametrize("options", [{}, {"length_grouping": False}, {"max_batch_tokens": 300}],
                         ids=["grouped", "arrival-order", "token-bounded"])
def test_batched_vectors_match_sentence_transformers(minilm_dir: Path, minilm: EmbeddingBackend,
                                                     expected: dict[str, np.ndarray],
                                                     options: dict[str, Any]) -> None:
    backend = load(minilm_dir, **options) if options else minilm
    texts = list(expected)
    random.Random(1).shuffle(texts)  # short and long side by side
    got = embed(backend, texts)
    similarity = cosines(got, np.array([expected[text] for text in texts]))
    assert similarity.min() >= PARITY, [texts[i][:40] for i in np.argsort(similarity)[:3]]
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_each_text_alone_matches_sentence_transformers(minilm: EmbeddingBackend,
                                                       expected: dict[str, np.ndarray]) -> None:
    for text, want in expected.items():
        [got] = embed(minilm, [text])
        assert cosines(got[None], want[None])[0] >= PARITY, text[:40]


def test_paraphrases_score_above_every_unrelated_pair(minilm: EmbeddingBackend, minilm_dir: Path,
                                                      tmp_path: Path) -> None:
    def margin(backend: EmbeddingBackend) -> float:
        vectors = embed(backend, [s for pair in PARAPHRASES for s in pair])
        similar = vectors @ vectors.T
        pairs = len(PARAPHRASES)
        same = [similar[2 * i, 2 * i + 1] for i in range(pairs)]
        unrelated = [similar[a, b] for a in range(2 * pairs) for b in range(a + 1, 2 * pairs)
                     if a // 2 != b // 2]
        return float(min(same) - max(unrelated))

    assert margin(minilm) > 0.1
    # the same test on the same architecture with random weights fails: it checks the weights
    import torch
    from transformers import AutoConfig, AutoModel

    random_dir = tmp_path / "random"
    shutil.copytree(minilm_dir, random_dir)
    torch.manual_seed(0)
    model = AutoModel.from_config(AutoConfig.from_pretrained(minilm_dir))  # type: ignore[no-untyped-call]
    model.save_pretrained(random_dir)
    assert margin(load(random_dir)) < 0


@pytest.mark.parametrize("mode", ["cls", "max"])
def test_other_pooling_modes_match_sentence_transformers(minilm_dir: Path, mode: str) -> None:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    texts = mixed_texts()[:24]
    word = Transformer(str(minilm_dir), max_seq_length=256)
    reference = SentenceTransformer(modules=[word, Pooling(384, pooling_mode=mode)],
                                    device="cpu")
    got = embed(load(minilm_dir, pooling=mode, normalize=False), texts)
    assert cosines(got, reference.encode(texts)).min() >= PARITY


def test_plain_transformers_folder_needs_pooling(minilm_dir: Path, tmp_path: Path,
                                                 expected: dict[str, np.ndarray]) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm_dir / name, plain / name)
    with pytest.raises(LoadError, match=r"no modules.json.*options.pooling"):
        load(plain)
    backend = load(plain, pooling="mean", normalize=True, max_length=256)
    texts = list(expected)[:20]
    assert cosines(embed(backend, texts), np.array([expected[t] for t in texts])).min() >= PARITY


def test_folders_it_cannot_embed_like_sentence_transformers_are_refused(minilm_dir: Path,
                                                                        tmp_path: Path) -> None:
    folder = tmp_path / "dense"
    shutil.copytree(minilm_dir, folder)
    modules = json.loads((folder / "modules.json").read_text())
    (folder / "modules.json").write_text(json.dumps(
        [*modules, {"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"}]))
    with pytest.raises(LoadError, match=r"Dense.* not supported"):
        load(folder)
    (folder / "modules.json").write_text(json.dumps(modules))
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({**pooling, "pooling_mode_cls_token": True}))
    with pytest.raises(LoadError, match=r"pooling .* is not supported"):
        load(folder)
    with pytest.raises(LoadError, match="max_batch_tokens = 100 is less than one text"):
        load(minilm_dir, max_batch_tokens=100)
    with pytest.raises(LoadError, match=r"options.dimensions \[384\]"):
        load(minilm_dir, dimensions=[384])


def test_token_ids_embed_as_their_text(minilm: EmbeddingBackend, reference: Any) -> None:
    texts = ["how do I reset my password", "Straße 😍"]
    ids = [reference.tokenizer(text)["input_ids"] for text in texts]
    rows = [minilm.preprocess({"tokens": tokens}, None) for tokens in ids]
    got = np.array(minilm.predict_batch(rows))
    assert cosines(got, embed(minilm, texts)).min() >= PARITY
    assert [v.tokens for v in minilm.predict_batch(rows)] == [len(t) for t in ids]


def test_dimensions_cut_and_renormalise_where_the_model_allows(minilm_dir: Path) -> None:
    backend = load(minilm_dir, dimensions=[128])
    assert backend.parse_parameters({"dimensions": 128}) == 128
    assert backend.parse_parameters({"dimensions": 384}) is None
    for wrong in (100, 0, 1000, "128", True):
        with pytest.raises(InvalidInput, match="dimensions"):
            backend.parse_parameters({"dimensions": wrong})
    with pytest.raises(InvalidInput, match="unknown parameters"):
        backend.parse_parameters({"normalize": False})
    texts = ["a short query", "another one entirely"]
    full, cut = embed(backend, texts), embed(backend, texts, 128)
    assert cut.shape == (2, 128)
    prefix = full[:, :128] / np.linalg.norm(full[:, :128], axis=1, keepdims=True)
    assert np.allclose(cut, prefix, atol=1e-6)


@pytest.mark.parametrize(("item", "message"), [
    ("", "text is empty"), ("   ", "text is empty"), (7, "got int"), (None, "got NoneType"),
    ({"text": 3}, "got int"), ({"tokens": []}, "non-empty list"), ({"tokens": [101, -1]}, "token 1"),
    ({"tokens": [101, 30522]}, "token 1"), ({"tokens": [1.5]}, "token 0"),
    ({"tokens": [101] * 257}, "257 tokens"), ({"text": "a", "x": 1}, "unknown keys"),
    ("x" * 10_001, "10001 characters"),
])
def test_bad_items_are_refused_saying_why(minilm: EmbeddingBackend, item: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        minilm.preprocess(item, None)


def test_length_groups_keep_every_row_once_within_the_token_budget() -> None:
    rng = random.Random(0)
    for _ in range(200):
        lengths = [rng.randint(1, 256) for _ in range(rng.randint(1, 64))]
        budget = rng.choice([None, 256, 512, 2048])
        for grouping in (True, False):
            groups = length_groups(lengths, grouping=grouping, max_tokens=budget)
            assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
            if budget is not None:
                assert all(len(g) * max(lengths[i] for i in g) <= budget for g in groups)
            if not grouping and budget is None:
                assert groups == [list(range(len(lengths)))]


def test_a_long_batch_runs_as_bounded_forward_calls(minilm_dir: Path) -> None:
    backend = load(minilm_dir, max_batch_tokens=512)
    widths: list[tuple[int, int]] = []
    forward = backend._forward

    def spy(batch: list[list[int]]) -> Any:
        widths.append((len(batch), max(len(ids) for ids in batch)))
        return forward(batch)

    backend._forward = spy  # type: ignore[method-assign]
    backend.predict_batch([Passage(" ".join(["word"] * 300), None)] * 8)
    assert widths == [(2, 256)] * 4
