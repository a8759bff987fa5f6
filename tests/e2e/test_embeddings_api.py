"""all-MiniLM-L6-v2 served by a real server, called the way RAG code calls it: the official
``openai`` client and LangChain's ``OpenAIEmbeddings`` against ``/v1/embeddings``, beside
``/predict`` and v2 on the same batcher; the vectors checked against sentence-transformers'
``encode`` of the same folder, and every kind of bad input answered 4xx in OpenAI's error shape."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from batchserve.artifacts import artifact_sha256

from tests.support import ServerProcess, running_server, write_models
from tests.support.openai_schema import assert_embeddings_response
from tests.support.texts import EMOJI, NON_ASCII, QUERIES, passages

TEXTS = [*QUERIES[:6], *NON_ASCII[:3], *EMOJI[:3], *passages(3)]
PARITY = 0.9999
MAX_ITEMS = 64


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Iterator[ServerProcess]:
    config = write_models(tmp_path_factory.mktemp("embeddings") / "models.toml", [
        {"name": "minilm", "backend": "embedding", "path": str(minilm_dir),
         "sha256": artifact_sha256(minilm_dir), "max_batch_size": 8, "max_wait_ms": 5,
         "options": {"max_chars": 4000, "dimensions": [128], "max_batch_tokens": 1024,
                     "torch_threads": 1}},
        {"name": "echo", "backend": "echo", "path": "unused"},
    ])
    with running_server(config, env={"BATCHSERVE_MAX_ITEMS": str(MAX_ITEMS)}) as process:
        yield process


@pytest.fixture(scope="module")
def reference(minilm_dir: Path) -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_dir), device="cpu", local_files_only=True)


@pytest.fixture(scope="module")
def expected(reference: Any) -> dict[str, np.ndarray]:
    return dict(zip(TEXTS, reference.encode(TEXTS), strict=True))


@pytest.fixture
def client(server: ServerProcess) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


def assert_parity(vectors: Any, texts: list[str], expected: dict[str, np.ndarray]) -> None:
    got = np.array(vectors, dtype=np.float64)
    want = np.array([expected[text] for text in texts], dtype=np.float64)
    cosine = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert cosine.min() >= PARITY, [texts[i][:30] for i in np.argsort(cosine)[:3]]


@pytest.mark.parametrize("encoding_format", ["base64", "float"])
def test_the_openai_client_gets_sentence_transformers_vectors(client: Any, reference: Any,
                                                              expected: dict[str, np.ndarray],
                                                              encoding_format: str) -> None:
    # the client asks for base64 unless told otherwise, and decodes it itself
    extra = {} if encoding_format == "base64" else {"encoding_format": "float"}
    answer = client.embeddings.create(model="minilm", input=TEXTS, **extra)
    assert answer.model == "minilm" and [d.index for d in answer.data] == list(range(len(TEXTS)))
    assert_parity([d.embedding for d in answer.data], TEXTS, expected)
    tokens = sum(min(len(reference.tokenizer(text)["input_ids"]), 256) for text in TEXTS)
    assert answer.usage.prompt_tokens == answer.usage.total_tokens == tokens


def test_concurrent_callers_batched_together_get_their_own_vectors(client: Any,
                                                                   expected: dict[str, np.ndarray]) -> None:
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda text: client.embeddings.create(model="minilm", input=text),
                                TEXTS * 2))
    assert_parity([a.data[0].embedding for a in answers], TEXTS * 2, expected)


def test_base64_is_little_endian_float32(server: ServerProcess, expected: dict[str, np.ndarray]) -> None:
    body = httpx.post(f"{server.url}/v1/embeddings", timeout=60,
                      json={"model": "minilm", "input": TEXTS[0], "encoding_format": "base64"}).json()
    assert_embeddings_response(body, model="minilm", count=1, encoding="base64")
    plain = httpx.post(f"{server.url}/v1/embeddings", timeout=60,
                       json={"model": "minilm", "input": TEXTS[:2]}).json()
    assert_embeddings_response(plain, model="minilm", count=2)
    vector = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    assert vector.shape == (384,)
    assert_parity([vector], TEXTS[:1], expected)


def test_dimensions_the_model_allows_and_refuses(client: Any) -> None:
    from openai import BadRequestError

    cut = client.embeddings.create(model="minilm", input="a query", dimensions=128)
    assert len(cut.data[0].embedding) == 128
    assert np.linalg.norm(cut.data[0].embedding) == pytest.approx(1.0, abs=1e-5)
    assert len(client.embeddings.create(model="minilm", input="a", dimensions=384).data[0].embedding) == 384
    with pytest.raises(BadRequestError) as refused:
        client.embeddings.create(model="minilm", input="a query", dimensions=100)
    assert refused.value.status_code == 400 and refused.value.param == "dimensions"


def test_token_arrays_are_the_models_own_ids(server: ServerProcess, reference: Any,
                                             expected: dict[str, np.ndarray]) -> None:
    ids = [reference.tokenizer(text)["input_ids"] for text in TEXTS[:3]]
    for payload, texts in ((ids, TEXTS[:3]), (ids[0], TEXTS[:1])):
        body = httpx.post(f"{server.url}/v1/embeddings", timeout=60,
                          json={"model": "minilm", "input": payload}).json()
        assert_parity([d["embedding"] for d in body["data"]], texts, expected)


def test_models_are_listed(client: Any) -> None:
    from openai import NotFoundError

    assert {m.id for m in client.models.list()} == {"minilm"}  # the embedding models only
    assert client.models.retrieve("minilm").owned_by == "batchserve"
    for name in ("nope", "echo"):
        with pytest.raises(NotFoundError):
            client.models.retrieve(name)


def test_langchain_openai_embeddings(server: ServerProcess, expected: dict[str, np.ndarray]) -> None:
    from langchain_openai import OpenAIEmbeddings
    from pydantic import SecretStr

    # check_embedding_ctx_length=False: send texts, not tiktoken ids (which are OpenAI's own)
    embeddings = OpenAIEmbeddings(model="minilm", base_url=f"{server.url}/v1", api_key=SecretStr("unused"),
                                  check_embedding_ctx_length=False, max_retries=0)
    assert_parity(embeddings.embed_documents(TEXTS), TEXTS, expected)
    assert_parity([embeddings.embed_query(TEXTS[0])], TEXTS[:1], expected)


def test_predict_and_v2_answer_the_same_vectors(server: ServerProcess,
                                                expected: dict[str, np.ndarray]) -> None:
    texts = TEXTS[:4]
    predicted = httpx.post(f"{server.url}/predict/minilm", timeout=60,
                           json={"inputs": [texts[0], {"text": texts[1]}, *texts[2:]]}).json()
    assert_parity(predicted["outputs"], texts, expected)
    v2 = httpx.post(f"{server.url}/v2/models/minilm/infer", timeout=60, json={"inputs": [
        {"name": "text", "datatype": "BYTES", "shape": [4], "data": texts}]}).json()
    [output] = v2["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("embedding", "FP32", [4, 384])
    assert_parity(np.array(output["data"]).reshape(4, 384), texts, expected)
    metadata = httpx.get(f"{server.url}/v2/models/minilm", timeout=10).json()
    assert metadata["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}]


@pytest.mark.parametrize(("body", "status", "param", "message"), [
    ({"input": ["fine", ""]}, 400, "input", "item 1: text is empty"),
    ({"input": ["fine", 5]}, 400, "input", "item 1: expected a string"),
    ({"input": ["fine", {"text": "x"}]}, 400, "input", "item 1: expected a string"),
    ({"input": ["fine", [101, -3]]}, 400, "input", "item 1: token 1 is -3"),
    ({"input": ["x" * 4001]}, 400, "input", "item 0: text has 4001 characters"),
    ({"input": ["a"] * (MAX_ITEMS + 1)}, 413, None, f"at most {MAX_ITEMS}"),
    ({"input": []}, 400, "input", "empty array"),
    ({"input": "a", "encoding_format": "binary"}, 400, "encoding_format", "'binary' is not supported"),
    ({"input": "a", "dimensions": 100}, 400, "dimensions", "vectors of [128, 384] values only"),
    ({"input": "a", "dimensions": "128"}, 400, "dimensions", "positive integer"),
    ({"input": "a", "model": "echo"}, 400, "model", "not an embedding model"),
    ({"input": "a", "model": "nope"}, 404, None, "nope"),
    ({"input": 3}, 422, None, "field 'input'"),
    ({"input": "a", "temperature": 1}, 422, None, "unknown fields"),
])
def test_bad_requests_are_refused_in_openai_error_shape(server: ServerProcess, body: dict[str, Any],
                                                        status: int, param: str | None,
                                                        message: str) -> None:
    response = httpx.post(f"{server.url}/v1/embeddings", json={"model": "minilm", **body}, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error["message"] and error["param"] == param
    assert error["type"] == "invalid_request_error" and isinstance(error["code"], str)
    assert httpx.post(f"{server.url}/v1/embeddings", json={"model": "minilm", "input": "still fine"},
                      timeout=60).status_code == 200


def test_bodies_that_are_not_json_objects_are_refused(server: ServerProcess) -> None:
    for content, headers, status in ((b"{not json", {}, 422), (b"[1]", {}, 422),
                                     (b'{"model": "minilm", "input": "a"}',
                                      {"content-type": "text/plain"}, 415)):
        response = httpx.post(f"{server.url}/v1/embeddings", content=content, headers=headers, timeout=60)
        assert response.status_code == status and "message" in response.json()["error"]
