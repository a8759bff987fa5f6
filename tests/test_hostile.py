"""Hostile input against a real server: property-based fuzzing of every endpoint from the
OpenAPI document, then hand-written nasties. Zero 5xx, and the server is healthy after."""

from __future__ import annotations

import base64
import io
import socket
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from PIL import Image

from tests.support import ServerProcess, running_server, write_models

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, diabetes_path: Path, resnet_weights: Path,
           transformer_dir: Path) -> Iterator[ServerProcess]:
    config = write_models(tmp_path_factory.mktemp("hostile") / "models.toml", [
        {"name": "diabetes", "backend": "sklearn", "path": str(diabetes_path)},
        {"name": "resnet50", "backend": "resnet50", "path": str(resnet_weights), "max_batch_size": 2,
         "options": {"max_pixels": 4_000_000}},
        {"name": "sentiment", "backend": "transformer", "path": str(transformer_dir),
         "options": {"max_chars": 2000}},
    ])
    with running_server(config) as process:
        yield process


def test_fuzzing_from_the_openapi_document_finds_no_5xx(server: ServerProcess) -> None:
    """Every operation of /openapi.json, with schemathesis's generated cases (valid and not)."""
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    # an invalid operation (Err) has no .ok(): the test fails, as it should
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 15

    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def no_server_error(case: Any) -> None:
            response = case.call(timeout=30)
            assert response.status_code < 500, (case.method, case.formatted_path, response.text[:300])

        no_server_error()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def jpeg(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 20, 30)).save(buffer, format="JPEG")
    return buffer.getvalue()


def raw_http(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


def test_hand_written_nasties(server: ServerProcess) -> None:
    row = [0.0] * 10
    json_type = {"content-type": "application/json"}
    bomb = base64.b64encode(png_claiming(100_000, 100_000)).decode()

    def upload(content: bytes, content_type: str) -> dict[str, Any]:
        return {"content": content, "headers": {"content-type": content_type}}

    def framed(length: str) -> dict[str, Any]:
        return {"content": b"{}", "headers": {"inference-header-content-length": length}}

    cases: list[tuple[str, dict[str, Any]]] = [
        ("/predict", {"content": b"{", "headers": json_type}),
        ("/predict", {"content": b"\xc3\x28\xa0\xa1", "headers": json_type}),
        ("/predict", {"json": {"model": "diabetes", "inputs": [[float("1e308")] * 10]}}),
        ("/predict", {"content": b'{"model": "diabetes", "inputs": [[NaN, 1, 2, 3, 4, 5, 6, 7, 8, 9]]}'}),
        ("/predict", {"content": b'{"model": "diabetes", "inputs": [[Infinity]]}'}),
        ("/predict", {"content": b'{"model": "diabetes", "inputs": [[' + b"9" * 5000 + b"]]}"}),
        ("/predict", {"json": {"model": "diabetes", "inputs": [row] * 5000}}),
        ("/predict", {"content": b"[" * 100_000, "headers": json_type}),
        ("/predict", {"json": {"model": "diabetes", "inputs": [{"a": {"b": {"c": [1]}}}]}}),
        ("/predict", {"json": {"model": ["diabetes"], "inputs": [row]}}),
        ("/predict", {"json": {"model": "diabetes", "inputs": [row], "parameters": {"x": [1] * 10}}}),
        ("/predict", {"json": {"model": "sentiment", "inputs": ["x" * 1_000_000]}}),
        ("/predict", {"content": b'{"model": "sentiment", "inputs": ["\\ud800 lone surrogate"]}'}),
        ("/predict", {"json": {"model": "sentiment", "inputs": [""] * 3}}),
        ("/predict", {"json": {"model": "resnet50", "inputs": [bomb]}}),
        ("/predict/resnet50", upload(png_claiming(30_000, 30_000), "image/png")),
        ("/predict/resnet50", upload(jpeg((64, 64))[:200], "image/jpeg")),
        ("/predict/resnet50", upload(b"GIF89a" + b"\0" * 100, "image/gif")),
        ("/predict/resnet50", upload(b"--x\r\n\r\n", "multipart/form-data")),
        ("/predict/resnet50", upload(b"x" * 100, "multipart/form-data; b=1")),
        ("/predict/diabetes", upload(b"\0" * 1000, "application/octet-stream")),
        ("/predict/diabetes", upload(b"hello", "text/plain; charset=utf-8")),
        ("/predict/../models", {"json": {"inputs": [row]}}),
        ("/predict/%00", {"json": {"inputs": [row]}}),
        ("/v2/models/diabetes/infer", framed("-1")),
        ("/v2/models/diabetes/infer", framed("9" * 40)),
        ("/v2/models/sentiment/infer", {"json": {"inputs": [{"name": "text", "shape": [1],
                                                             "datatype": "BYTES", "data": [5]}]}}),
        ("/v2/models/diabetes/infer", {"json": {"inputs": [{"name": "input", "shape": [0, 10],
                                                            "datatype": "FP64", "data": []}]}}),
        ("/predict/resnet50?top_k=²", upload(jpeg((64, 64)), "image/jpeg")),
        ("/predict", upload(b'{"model": "diabetes", "inputs": [[0, 0, 0, 0, 0, 0, 0, 0, 0, 0]]}',
                            "application/x-www-form-urlencoded")),
    ]
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for path, kwargs in cases:
            response = client.post(path, **kwargs)
            assert 400 <= response.status_code < 500, (path, str(kwargs)[:120], response.status_code,
                                                       response.text[:200])
        big = client.post("/predict", json={"model": "diabetes", "inputs": [[10 ** 30] * 10]})
        assert big.status_code == 200  # huge but finite in and out: a fair question
        huge = client.post("/predict", content=b"x" * (17 * 1024 * 1024),
                           headers={"content-type": "application/json"})
        assert huge.status_code == 413
    chunked = (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n"
               + b"".join(b"100000\r\n" + b"[" * 0x100000 + b"\r\n" for _ in range(17)) + b"0\r\n\r\n")
    assert raw_http(server.port, chunked).startswith(b"HTTP/1.1 413")
    lying = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999999\r\n\r\n{}"
    assert raw_http(server.port, lying).split(b" ")[1].startswith(b"4")
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        ok = client.post("/predict", json={"model": "diabetes", "inputs": [row]})
        assert ok.status_code == 200
    assert server.process.poll() is None
