"""The v2 binary tensor data extension at its edges: BYTES elements whose lengths or count
do not fit the data, numeric data of the wrong size, binary and JSON inputs in one request,
and binary outputs (``binary_data_output``, per-output ``binary_data``, BYTES outputs)."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from batchserve.v2.tensors import parse_infer
from fastapi.testclient import TestClient
from sklearn.linear_model import LinearRegression

from tests.support import make_client, wait_ready


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, diabetes_path: Path) -> Iterator[TestClient]:
    with make_client(tmp_path_factory.mktemp("v2-binary"), [
        {"name": "diabetes", "backend": "sklearn", "path": str(diabetes_path)},
        {"name": "echo", "backend": "echo", "path": "x"},
    ]) as test_client:
        wait_ready(test_client)
        yield test_client


def elements(*values: bytes) -> bytes:
    """BYTES elements in binary form: each a 4-byte little-endian length, then its bytes."""
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def framed(inputs: list[dict[str, Any]], binary: bytes, **request: Any) -> tuple[bytes, dict[str, str]]:
    header = json.dumps({"inputs": inputs, **request}).encode()
    return header + binary, {"inference-header-content-length": str(len(header))}


def post(client: TestClient, model: str, body: bytes, headers: dict[str, str]) -> Any:
    return client.post(f"/v2/models/{model}/infer", content=body,
                       headers={**headers, "content-type": "application/octet-stream"})


def bytes_input(shape: list[int], blob: bytes) -> tuple[bytes, dict[str, str]]:
    return framed([{"name": "input", "shape": shape, "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(blob)}}], blob)


@pytest.mark.parametrize(("shape", "blob", "words"), [
    ([1], b"\x05\x00", "2 bytes cannot hold the 1 BYTES elements"),  # a length cut short
    ([1], struct.pack("<I", 10) + b"abc", "BYTES element 0 runs past the data"),
    ([2], elements(b"1") + struct.pack("<I", 9) + b"2", "BYTES element 1 runs past the data"),
    ([3], elements(b"1", b"2") + b"\x01\x00", "the binary data ends before BYTES element 2"),
    ([2], elements(b"1", b"2", b"3"), "5 bytes left after the 2 BYTES elements"),  # one too many
], ids=["length-cut-short", "element-past-the-end", "second-past-the-end", "one-too-few",
        "one-too-many"])
def test_bytes_elements_that_do_not_fit_the_data_are_a_400(client: TestClient, shape: list[int],
                                                          blob: bytes, words: str) -> None:
    response = post(client, "echo", *bytes_input(shape, blob))
    assert response.status_code == 400, response.text
    assert words in response.json()["error"]


@pytest.mark.parametrize("size", [79, 81, 40])
def test_numeric_binary_data_must_be_the_shapes_size(client: TestClient, size: int) -> None:
    body, headers = framed([{"name": "input", "shape": [1, 10], "datatype": "FP64",
                             "parameters": {"binary_data_size": size}}], b"\0" * size)
    response = post(client, "diabetes", body, headers)
    assert response.status_code == 400, response.text
    assert f"{size} bytes for shape [1, 10] of FP64" in response.json()["error"]


def test_binary_and_json_inputs_in_one_request() -> None:
    ints = np.array([7, -8, 9], dtype="<i4").tobytes()
    texts = elements(b"first", b"", "zwölf".encode())
    body, headers = framed([
        {"name": "a", "shape": [2], "datatype": "FP32", "data": [1.5, 2.5]},
        {"name": "b", "shape": [3], "datatype": "INT32", "parameters": {"binary_data_size": len(ints)}},
        {"name": "c", "shape": [1], "datatype": "BYTES", "data": ["json text"]},
        {"name": "d", "shape": [3], "datatype": "BYTES", "parameters": {"binary_data_size": len(texts)}},
    ], ints + texts)
    request = parse_infer(body, headers["inference-header-content-length"].encode())
    assert list(request.inputs) == ["a", "b", "c", "d"]
    assert request.inputs["a"].array.tolist() == [1.5, 2.5]
    assert request.inputs["b"].array.tolist() == [7, -8, 9]  # the binary data's first part
    assert request.inputs["c"].array.tolist() == [b"json text"]
    assert request.inputs["d"].array.tolist() == [b"first", b"", "zwölf".encode()]  # the rest


def split(response: Any) -> tuple[dict[str, Any], bytes]:
    length = int(response.headers["inference-header-content-length"])
    header: dict[str, Any] = json.loads(response.content[:length])
    return header, response.content[length:]


def test_binary_data_output_answers_every_output_in_binary(
        client: TestClient, diabetes: tuple[np.ndarray, LinearRegression]) -> None:
    features, estimator = diabetes
    inputs = [{"name": "input", "shape": [3, 10], "datatype": "FP64", "data": features[:3].tolist()}]
    response = client.post("/v2/models/diabetes/infer",
                           json={"inputs": inputs, "parameters": {"binary_data_output": True}})
    assert response.status_code == 200, response.text
    header, binary = split(response)
    [output] = header["outputs"]
    assert "data" not in output and output["parameters"] == {"binary_data_size": 24}
    assert len(binary) == 24
    assert np.frombuffer(binary, dtype="<f8").tolist() == pytest.approx(
        estimator.predict(features[:3]).tolist(), rel=1e-12)
    # an output asked for without binary_data is JSON, whatever binary_data_output says
    plain = client.post("/v2/models/diabetes/infer", json={
        "inputs": inputs, "parameters": {"binary_data_output": True},
        "outputs": [{"name": "output", "parameters": {"binary_data": False}}]})
    assert "inference-header-content-length" not in plain.headers
    assert plain.json()["outputs"][0]["data"] == pytest.approx(np.frombuffer(binary, dtype="<f8").tolist())


def test_bytes_outputs_in_binary_are_length_prefixed(client: TestClient) -> None:
    inputs = [{"name": "input", "shape": [3], "datatype": "FP64", "data": [1, 2.5, -3]}]
    response = client.post("/v2/models/echo/infer", json={
        "inputs": inputs, "outputs": [{"name": "output", "parameters": {"binary_data": True}}]})
    assert response.status_code == 200, response.text
    header, binary = split(response)
    [output] = header["outputs"]
    assert (output["datatype"], output["shape"]) == ("BYTES", [3])
    assert output["parameters"]["binary_data_size"] == len(binary)
    assert binary == elements(b"2.0", b"5.0", b"-6.0")
    as_json = client.post("/v2/models/echo/infer", json={"inputs": inputs}).json()
    assert as_json["outputs"][0]["data"] == ["2.0", "5.0", "-6.0"]
