"""Hostile input against a real server: property-based fuzzing of every endpoint from the
OpenAPI document, then of the v2 (Open Inference Protocol) endpoints with the protocol's own
tensor schema and binary framing, then hand-written nasties. Zero 5xx, each error names what was
wrong, and the server is healthy after."""

from __future__ import annotations

import base64
import copy
import io
import json
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
from hypothesis import strategies as st
from PIL import Image
from schemathesis.generation import GenerationMode

from tests.support import ServerProcess, running_server, write_models

pytestmark = pytest.mark.slow
MODELS = ["diabetes", "resnet50", "sentiment"]


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


# -- the management API, with its token: past the 401s and 403s ----------------------------

TOKEN = "correct-horse-battery-staple"
MANAGED = ["alpha", "beta"]
VERSIONED = "gamma"
"""A model with versions 1 and 2: the routing operations' model (the others answer them 400)."""


def management_schema(document: dict[str, Any]) -> dict[str, Any]:
    """The management operations of the server's document, with the served models' names and
    the PATCH and PUT bodies (which the routes read themselves, so the document does not show
    them)."""
    from batchserve.management import BatcherSettings
    from batchserve.routing_api import RoutingBody

    document = copy.deepcopy(document)
    document["paths"] = {
        path: {method: operation for method, operation in operations.items()
               if "management" in operation.get("tags", [])}
        for path, operations in document["paths"].items()}
    document["paths"] = {path: operations for path, operations in document["paths"].items() if operations}
    for operations in document["paths"].values():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", []):
                if parameter["name"] == "name":  # the served models, and names that are not
                    parameter["schema"] = {"enum": [*MANAGED, VERSIONED, "delta", "alpha/../beta",
                                                    "%00", "http://evil.example/m.joblib"]}
                if parameter["name"] == "version":
                    parameter["schema"] = {"enum": ["1", "2", "9", "%00"]}
            if method == "patch":
                operation["requestBody"] = {"required": True, "content": {
                    "application/json": {"schema": BatcherSettings.model_json_schema()}}}
            if method == "put":
                operation["requestBody"] = {"required": True, "content": {
                    "application/json": {"schema": RoutingBody.model_json_schema()}}}
    return document


def test_management_fuzzing_with_the_token_finds_no_5xx(tmp_path: Path) -> None:
    config = write_models(tmp_path / "models.toml", [
        *({"name": name, "backend": "echo", "path": "x"} for name in MANAGED),
        {"name": VERSIONED, "backend": "echo", "path": "x",
         "versions": [{"version": "1"}, {"version": "2"}]}])
    with running_server(config, env={"BATCHSERVE_MANAGEMENT_TOKEN": TOKEN}) as managed:
        document = httpx.get(f"{managed.url}/openapi.json", timeout=30).json()
        schema = schemathesis.openapi.from_dict(management_schema(document))
        operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
        # index, load, unload, PATCH config; routing (GET, PUT), promote, rollback, shadow
        assert len(operations) == 9
        seen: dict[str, set[int]] = {}

        for operation in operations:
            # only PATCH has a body: for the others (a name, or nothing) nothing is negative
            modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
            for mode in modes[: 2 if operation.method.upper() in ("PATCH", "PUT") else 1]:
                @given(case=operation.as_strategy(generation_mode=mode))
                @settings(max_examples=30, deadline=None, derandomize=True, database=None,
                          suppress_health_check=list(HealthCheck))
                def no_server_error(case: Any) -> None:
                    response = case.call(base_url=managed.url, timeout=60,
                                         headers={"Authorization": f"Bearer {TOKEN}"})
                    context = (case.method, case.formatted_path, str(case.body)[:200])
                    assert response.status_code < 500, (context, response.text[:300])
                    seen.setdefault(f"{case.method} {case.operation.path}", set()).add(response.status_code)

                no_server_error()
        # every operation was answered past the token check, and did its work at least once (a
        # rollback: when a change came before it, which the order of the operations may not give)
        assert all((200 in codes or op.endswith("/rollback")) and not codes & {401, 403}
                   for op, codes in seen.items()), seen
        assert len(seen) == 9, seen
        with httpx.Client(base_url=managed.url, timeout=30) as client:
            auth = {"Authorization": f"Bearer {TOKEN}"}
            sane = {"max_batch_size": 8, "max_wait_ms": 0, "max_queue": 1000, "timeout_ms": 30_000}
            for name in MANAGED:  # whatever was unloaded or reconfigured, it loads and serves
                assert client.patch(f"/models/{name}/config", headers=auth, json=sane).status_code == 200
                load = client.post(f"/v2/repository/models/{name}/load", headers=auth)
                assert load.status_code == 200, load.text
                answer = client.post("/predict", json={"model": name, "inputs": [1]})
                assert answer.status_code == 200 and answer.json()["outputs"] == [2.0], answer.text
        assert managed.process.poll() is None


# -- the v2 endpoints, with the protocol's tensors and framing ------------------------------

V2_DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
                "FP16", "FP32", "FP64", "BYTES"]
V2_TENSOR = {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
    "name": {"type": "string"}, "datatype": {"enum": V2_DATATYPES},
    "shape": {"type": "array", "maxItems": 70, "items": {"type": "integer", "minimum": 0}},
    "data": {"type": "array"},
    "parameters": {"type": "object", "properties": {"binary_data_size": {"type": "integer"}}}}}
V2_REQUEST = {"type": "object", "required": ["inputs"], "properties": {
    "id": {"type": "string"}, "parameters": {"type": "object"},
    "inputs": {"type": "array", "minItems": 1, "items": V2_TENSOR},
    "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
        "name": {"type": "string"}, "parameters": {"type": "object"}}}}}}
V2_HEADERS = [{"name": "inference-header-content-length", "in": "header", "required": False,
               "schema": {"type": "string", "pattern": "^[0-9]{1,30}$"}},
              {"name": "x-request-timeout-ms", "in": "header", "required": False,
               "schema": {"type": "string"}}]


def v2_schema(document: dict[str, Any]) -> dict[str, Any]:
    """The server's own OpenAPI document, its v2 operations only, with the protocol's tensor
    schema for infer bodies, the framing headers, and the served models' names."""
    document = copy.deepcopy(document)
    document["paths"] = {path: operations for path, operations in document["paths"].items()
                         if path.startswith("/v2/models/")}
    for path, operations in document["paths"].items():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter["name"] == "name":
                    parameter["schema"] = {"anyOf": [{"enum": MODELS}, {"type": "string"}]}
            if path.endswith("/infer"):
                operation["requestBody"]["content"] = {"application/json": {"schema": V2_REQUEST}}
                operation["parameters"] = operation.get("parameters", []) + V2_HEADERS
    return document


def assert_v2_error(response: httpx.Response, context: Any) -> None:
    """A 4xx in the protocol's shape, ``{"error": "what was wrong"}``."""
    assert 400 <= response.status_code < 500, (context, response.status_code, response.text[:300])
    message = response.json().get("error")
    assert isinstance(message, str) and len(message) > 10, (context, response.text[:300])


def assert_healthy(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/v2/health/ready").status_code == 200
        ok = client.post("/v2/models/diabetes/infer", json={"inputs": [
            {"name": "input", "datatype": "FP64", "shape": [1, 10], "data": [0.0] * 10}]})
        assert ok.status_code == 200, ok.text
    assert server.process.poll() is None


def test_v2_fuzzing_with_the_protocols_schema_finds_no_5xx(server: ServerProcess) -> None:
    document = httpx.get(f"{server.url}/openapi.json", timeout=30).json()
    schema = schemathesis.openapi.from_dict(v2_schema(document))
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    # metadata, ready, infer, config and stats, with and without a version; every model's stats
    assert len(operations) == 11

    for operation in operations:
        infer = operation.path.endswith("/infer")
        # a GET's only parameters are path strings: nothing is negative for them
        for mode in [GenerationMode.POSITIVE, GenerationMode.NEGATIVE][: 2 if infer else 1]:
            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=80 if infer else 20, deadline=None, derandomize=True,
                      database=None, suppress_health_check=list(HealthCheck))
            def no_server_error(case: Any) -> None:
                response = case.call(base_url=server.url, timeout=30)
                context = (case.method, case.formatted_path, str(case.body)[:200], case.headers)
                assert response.status_code < 500, (context, response.text[:300])
                if response.status_code >= 400 and response.status_code != 404:
                    assert isinstance(response.json().get("error"), str), (context, response.text[:300])

            no_server_error()
    assert_healthy(server)


DIMS = st.sampled_from([0, 1, 2, 3, 10, 4096, 4097, 2**26 + 1, 2**63, 2**64 - 1])
LENGTH_HEADERS = st.sampled_from([b"-1", b"0", b"9" * 4301, b"0" * 4301, "\u00b2".encode(), b"1e3",
                                  b"7 8", b"0x10", b"", str(2**64).encode()])


@st.composite
def framed_v2_bodies(draw: st.DrawFn) -> tuple[str, bytes, dict[bytes, bytes]]:
    """A binary-framed infer request: a JSON header whose inputs carry binary data (BYTES
    length prefixes, or fixed-size numbers) of a right, short or long size, and a header length
    that is right, off, or one of the hostile ones."""
    model = draw(st.sampled_from(MODELS))
    inputs, blobs = [], []
    for index in range(draw(st.integers(1, 3))):
        datatype = draw(st.sampled_from(["BYTES", "FP64", "FP32", "UINT8", "BOOL"]))
        shape = draw(st.lists(DIMS, min_size=1, max_size=3) | st.lists(st.just(1), min_size=15,
                                                                         max_size=70))
        if datatype == "BYTES":
            lengths = draw(st.lists(st.integers(0, 2**32 - 1) | st.integers(0, 12), max_size=6))
            blob = b"".join(struct.pack("<I", n) + b"x" * min(n, 12) for n in lengths)
        else:
            blob = b"\0" * draw(st.integers(0, 96))
        blob = blob[: draw(st.integers(0, len(blob)))] if draw(st.booleans()) else blob
        size: Any = draw(st.sampled_from([len(blob), len(blob) + 1, -1, str(len(blob)), 1.5]))
        inputs.append({"name": f"in{index}" if model == "diabetes" else ("image" if model == "resnet50"
                                                                           else "text"),
                       "datatype": datatype, "shape": shape,
                       "parameters": draw(st.sampled_from([{"binary_data_size": size}, [size]]))})
        blobs.append(blob)
    header = json.dumps({"inputs": inputs}).encode()
    length = draw(st.sampled_from([str(len(header)).encode(), str(len(header) - 1).encode()])
                  | LENGTH_HEADERS)
    return model, header + b"".join(blobs), {b"inference-header-content-length": length}


def test_v2_binary_framing_fuzzing_finds_no_5xx(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        @given(request=framed_v2_bodies())
        @settings(max_examples=200, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def no_server_error(request: tuple[str, bytes, dict[bytes, bytes]]) -> None:
            model, body, headers = request
            response = client.post(f"/v2/models/{model}/infer", content=body, headers=headers)
            if response.status_code != 200:
                assert_v2_error(response, (model, body[:300], headers))

        no_server_error()
    assert_healthy(server)


def test_hand_written_v2_nasties(server: ServerProcess) -> None:
    def infer(shape: Any, data: Any = (), **spec: Any) -> dict[str, Any]:
        return {"json": {"inputs": [{"name": "input", "datatype": "FP64", "shape": shape,
                                     "data": list(data), **spec}]}}

    def framed(length: bytes, body: bytes = b"{}") -> dict[str, Any]:
        return {"content": body, "headers": [(b"inference-header-content-length", length)]}

    text = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2],
                                   "parameters": {"binary_data_size": 9}}]}).encode()
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("diabetes", infer([2**64 - 1] * 16_000), "it has 16000 dimensions"),
        ("diabetes", infer([1] * 65, [0.0]), "it has 65 dimensions"),
        ("diabetes", infer([1, 2**64 - 1, 0]), "shape[1] = 18446744073709551615 declares more than"),
        ("diabetes", infer([10_000_000, 0]), "has no elements"),
        ("diabetes", infer([0]), "shape[0] must be at least 1"),
        ("diabetes", infer([4097, 1], [0.0] * 4097), "at most 4096"),
        ("diabetes", infer([1, 10], [0.0] * 10, parameters=[1]), "'parameters' must be an object"),
        ("diabetes", infer([1, 10], [0.0] * 10, parameters={"binary_data_size": "80"}),
         "binary_data_size must be a non-negative integer"),
        ("diabetes", infer([2, 10], [[0.0] * 7, [0.0] * 13]), "does not match shape [2, 10]"),
        ("diabetes", framed(b"9" * 4301), "Inference-Header-Content-Length"),
        # a value that is not ASCII never reaches the app (granian passes text headers only): the
        # body is then read as JSON alone
        ("diabetes", framed("\u00b2".encode()), "'inputs' must be a non-empty list"),
        ("sentiment", framed(str(len(text)).encode(), text + struct.pack("<I", 5) + b"hello"),
         "ends before BYTES element 1"),
        ("sentiment", framed(str(len(text)).encode(), text + struct.pack("<I", 2**32 - 1) + b"hello"),
         "runs past the data"),
        ("resnet50", {"json": {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                           "data": ["not an image"]}]}}, "item 0"),
    ]
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for model, kwargs, words in cases:
            response = client.post(f"/v2/models/{model}/infer", **kwargs)
            assert_v2_error(response, (model, str(kwargs)[:120]))
            assert words in response.json()["error"], (model, words, response.text[:300])
        for path in ["/v2/models/nope", "/v2/models/nope/ready", "/v2/models/diabetes/versions/2",
                     "/v2/models/diabetes/versions/%00/ready", "/v2/models/" + "x" * 10_000,
                     "/v2/models/%ff%fe/ready", "/v2/models/diabetes/versions/" + "9" * 4301]:
            response = client.get(path)
            assert_v2_error(response, path)
            assert "nope" in response.json()["error"] or "model" in response.json()["error"], path
    assert_healthy(server)


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
