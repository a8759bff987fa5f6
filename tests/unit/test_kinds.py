"""A backend's kind of model (backends/kinds.py), declared by its methods, picks its v2 tensors
and its place behind /v1/embeddings; its class does not: a third-party backend that subclasses
no built-in one is served like the built-in backend of its kind."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from batchserve.backends import BUILTIN, backend_class
from batchserve.config import ModelConfig
from batchserve.v2 import codec as codecs
from fastapi.testclient import TestClient

from tests.support import make_client, wait_ready
from tests.support.openai_schema import assert_embeddings_response


def instance(name: str) -> Any:
    return backend_class(name)(ModelConfig(name="m", backend=name, path=Path("unused")))


@pytest.mark.parametrize(("name", "codec"), [
    ("sklearn", codecs.FeatureRowsCodec), ("xgboost", codecs.FeatureRowsCodec),
    ("lightgbm", codecs.FeatureRowsCodec), ("resnet50", codecs.ImageClassifierCodec),
    ("transformer", codecs.TextClassifierCodec), ("embedding", codecs.SentenceEmbedderCodec),
    ("sign", codecs.FeatureRowsCodec), ("text-length", codecs.SentenceEmbedderCodec),
    ("echo", codecs.Codec),
])
def test_a_backend_gets_its_kinds_codec(name: str, codec: type[codecs.Codec[Any]]) -> None:
    assert type(codecs.codec_for(instance(name))) is codec


@pytest.mark.parametrize("name", ["sign", "text-length"])
def test_the_plugins_of_a_kind_subclass_no_builtin_backend(name: str) -> None:
    assert [b for b in BUILTIN if issubclass(backend_class(name), backend_class(b))] == []


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with make_client(tmp_path_factory.mktemp("kinds"), [
        {"name": "sign", "backend": "sign", "path": "unused"},
        {"name": "lengths", "backend": "text-length", "path": "unused"},
    ]) as test_client:
        wait_ready(test_client)
        yield test_client


def test_a_plugin_of_the_feature_rows_kind_speaks_its_v2_tensors(client: TestClient) -> None:
    metadata = client.get("/v2/models/sign").json()
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP64", "shape": [-1, 2]}]
    assert metadata["outputs"] == [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                                   {"name": "probabilities", "datatype": "FP64", "shape": [-1, 2]}]
    response = client.post("/v2/models/sign/infer", json={"inputs": [
        {"name": "input", "shape": [2, 2], "datatype": "FP64", "data": [1, 2, -3, 1]}]})
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert outputs["label"]["data"] == ["yes", "no"]
    assert outputs["probabilities"] == {"name": "probabilities", "datatype": "FP64", "shape": [2, 2],
                                        "data": [0.25, 0.75, 0.75, 0.25]}


def test_a_plugin_of_the_embedder_kind_speaks_v2_and_openai(client: TestClient) -> None:
    metadata = client.get("/v2/models/lengths").json()
    assert metadata["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert metadata["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 3]}]
    response = client.post("/v2/models/lengths/infer", json={"inputs": [
        {"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a b", "hello"]}]})
    assert response.status_code == 200, response.text
    [embedding] = response.json()["outputs"]
    assert (embedding["datatype"], embedding["shape"]) == ("FP32", [2, 3])
    assert embedding["data"] == [3.0, 2.0, 1.0, 5.0, 1.0, 1.0]

    answer = client.post("/v1/embeddings", json={"model": "lengths", "input": ["a b c", "hi"],
                                                 "dimensions": 3})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert [d["embedding"] for d in body["data"]] == [[5.0, 3.0, 1.0], [2.0, 1.0, 1.0]]
    assert body["usage"] == {"prompt_tokens": 4, "total_tokens": 4}


def test_a_backend_of_another_kind_is_not_served_as_embeddings(client: TestClient) -> None:
    answer = client.post("/v1/embeddings", json={"model": "sign", "input": "a"})
    assert answer.status_code == 400
    assert "not an embedding model" in answer.json()["error"]["message"]


def test_openai_lists_the_embedding_models_only(client: TestClient) -> None:
    listed = client.get("/v1/models")
    assert listed.status_code == 200, listed.text
    assert [card["id"] for card in listed.json()["data"]] == ["lengths"]  # not "sign"
    assert client.get("/v1/models/lengths").json()["id"] == "lengths"
    refused = client.get("/v1/models/sign")
    assert refused.status_code == 404, refused.text
    error = refused.json()["error"]
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert "not an embedding model" in error["message"]


@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_openai_embeddings_answer_the_apis_schema(client: TestClient, encoding: str) -> None:
    answer = client.post("/v1/embeddings", json={"model": "lengths", "input": ["a b c", "hi", "x"],
                                                 "encoding_format": encoding})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert_embeddings_response(answer.json(), model="lengths", count=3, encoding=encoding)
