"""The shape of an OpenAI embeddings response (the API's ``CreateEmbeddingResponse``), checked on
the raw JSON: the official client reads what it needs and lets a wrong field through."""

from __future__ import annotations

from typing import Any


def assert_embeddings_response(body: Any, *, model: str, count: int, encoding: str = "float") -> None:
    """``body`` is ``{"object": "list", "data": [...], "model", "usage"}``, its ``data`` ``count``
    items ``{"object": "embedding", "index": i, "embedding"}`` in order (``embedding``: numbers,
    or with ``encoding="base64"`` a string), ``usage`` ``prompt_tokens`` and ``total_tokens``."""
    assert isinstance(body, dict) and set(body) == {"object", "data", "model", "usage"}, body
    assert body["object"] == "list" and body["model"] == model, body
    assert isinstance(body["data"], list) and len(body["data"]) == count, body["data"]
    for index, item in enumerate(body["data"]):
        assert set(item) == {"object", "index", "embedding"}, item
        assert item["object"] == "embedding" and item["index"] == index, item
        vector = item["embedding"]
        if encoding == "base64":
            assert isinstance(vector, str) and vector, item
        else:
            assert isinstance(vector, list) and vector, item
            assert all(isinstance(value, float) for value in vector), item
    usage = body["usage"]
    assert set(usage) == {"prompt_tokens", "total_tokens"}, usage
    assert all(type(usage[key]) is int and usage[key] >= 0 for key in usage), usage
    assert usage["total_tokens"] == usage["prompt_tokens"], usage  # embeddings have no completion
