"""The Open Inference Protocol's limits against a real server: shapes bounded before anything
is multiplied or built, and every malformed part of a request a clear 4xx that names it.

Each case here was a 5xx, a late or misleading error, or a large allocation before the limits.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from batchserve.v2.tensors import MAX_ELEMENTS

from tests.support import ServerProcess, running_server, write_models

ROW = [0.038, 0.051, 0.062, 0.022, -0.044, -0.035, -0.043, -0.003, 0.020, -0.018]
INFER = "/v2/models/diabetes/infer"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, diabetes_path: Path) -> Iterator[ServerProcess]:
    config = write_models(tmp_path_factory.mktemp("v2limits") / "models.toml",
                          [{"name": "diabetes", "backend": "sklearn", "path": str(diabetes_path)}])
    with running_server(config) as process:
        yield process


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120) as http:
        yield http
        # whatever the case did, the server is alive and answers afterwards
        assert http.get("/healthz").status_code == 200
        assert http.post(INFER, json=tensor([1, 10], ROW)).status_code == 200
    assert server.process.poll() is None


def tensor(shape: Any, data: Any = None, **fields: Any) -> dict[str, Any]:
    spec = {"name": "input", "datatype": "FP64", "shape": shape, **fields}
    if data is not None:
        spec["data"] = data
    return {"inputs": [spec]}


def error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, (response.status_code, response.text[:300])
    message = response.json()["error"]
    assert isinstance(message, str)
    return message


def framed(header: dict[str, Any], binary: bytes) -> tuple[bytes, dict[str, str]]:
    json_part = json.dumps(header).encode()
    return json_part + binary, {"inference-header-content-length": str(len(json_part))}


def peak_rss_bytes(server: ServerProcess) -> int:
    """The server's peak resident memory so far (Linux's VmHWM)."""
    status = Path(f"/proc/{server.process.pid}/status")
    if not status.exists():
        pytest.skip("needs Linux's /proc to read the server's peak memory")
    line = next(x for x in status.read_text().splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


@pytest.mark.parametrize(("shape", "data"), [
    ([2**64 - 1] * 16_000, []),  # 336 KB of dims: math.prod over them took most of a second
    ([1] * 65, [0.0]),  # past numpy's 64 dimensions: reshape raised ValueError, a 500
    ([1] * 17, [0.0]),
])
def test_too_many_dimensions_are_refused_without_echoing_them(client: httpx.Client, shape: list[int],
                                                             data: list[float]) -> None:
    message = error(client.post(INFER, json=tensor(shape, data)), 422)
    assert f"it has {len(shape)} dimensions" in message and "1 to 16" in message
    assert len(message) < 500


def test_a_dimension_is_bounded_before_the_product(client: httpx.Client) -> None:
    message = error(client.post(INFER, json=tensor([1, 2**64 - 1, 0], [])), 400)
    assert "shape[1] = 18446744073709551615 declares more than" in message


@pytest.mark.parametrize("shape", [
    [4, 2**25],  # each dimension under the cap (2^26 elements), their product twice it
    [1, 2**13, 2**14],
    [2, 2**13, 2**13, 2],
    [1, 2**26, 2],  # one dimension at the cap itself
])
def test_the_product_of_the_dimensions_is_capped(client: httpx.Client, shape: list[int]) -> None:
    assert all(dim <= MAX_ELEMENTS for dim in shape) and math.prod(shape) > MAX_ELEMENTS
    for body in (tensor(shape, []), tensor(shape, parameters={"binary_data_size": 0})):
        message = error(client.post(INFER, json=body), 400)
        assert message == f"input 'input': shape {shape} declares more than {MAX_ELEMENTS} elements"


@pytest.mark.parametrize(("shape", "status", "words"), [
    ([0], 400, "shape[0] must be at least 1"),  # was orphaned in the batcher: a 504 at the deadline
    ([0, 10], 400, "shape[0] must be at least 1"),
    ([3, 0], 400, "has no elements"),
    ([5000, 10], 413, "shape[0] = 5000 items; at most 4096"),
])
def test_empty_and_oversized_batches_are_refused(client: httpx.Client, shape: list[int], status: int,
                                                  words: str) -> None:
    count = shape[0] * shape[1] if len(shape) == 2 else 0
    response = client.post(INFER, json=tensor(shape, [0.0] * count),
                           headers={"x-request-timeout-ms": "3000"})
    assert words in error(response, status)


def test_a_zero_size_tensor_of_ten_million_rows_builds_nothing(server: ServerProcess,
                                                               client: httpx.Client) -> None:
    before = peak_rss_bytes(server)
    response = client.post(INFER, json=tensor([10_000_000, 0], []))
    assert "shape [10000000, 0] has no elements" in error(response, 400)
    # ten million empty rows took ~700 MB before the limit was checked
    assert peak_rss_bytes(server) - before < 100 * 1024 * 1024


@pytest.mark.parametrize("where", ["input", "output"])
def test_parameters_that_are_not_an_object(client: httpx.Client, where: str) -> None:
    body = tensor([1, 10], ROW, parameters=[1]) if where == "input" else {
        **tensor([1, 10], ROW), "outputs": [{"name": "output", "parameters": [1]}]}
    assert "parameters" in error(client.post(INFER, json=body), 422)


@pytest.mark.parametrize("length", ["9" * 4301, "0" * 4301])
def test_a_header_length_of_many_digits(client: httpx.Client, length: str) -> None:
    response = client.post(INFER, content=json.dumps(tensor([1, 10], ROW)).encode(),
                           headers={"inference-header-content-length": length})
    assert "Inference-Header-Content-Length must be a length within the body" in error(response, 422)


@pytest.mark.parametrize("size", ["80", -1, 80.0, True, [80], {"n": 80}])
def test_binary_data_size_must_be_a_non_negative_integer(client: httpx.Client, size: Any) -> None:
    body, headers = framed(tensor([1, 10], parameters={"binary_data_size": size}),
                           struct.pack("<10d", *ROW))
    message = error(client.post(INFER, content=body, headers=headers), 422)
    assert "binary_data_size must be a non-negative integer" in message


def test_nested_data_must_match_the_shape(client: httpx.Client) -> None:
    # twenty numbers in rows of 7 and 13 for a [2, 10] tensor were reshaped into rows of 10, silently
    body = tensor([2, 10], [ROW[:7], ROW[7:] + ROW])
    assert "does not match shape [2, 10] at axis 1" in error(client.post(INFER, json=body), 400)


def test_bytes_elements_are_walked_only_as_far_as_the_shape(client: httpx.Client) -> None:
    """A one-element BYTES tensor followed by a million more length prefixes: the error says
    how many bytes are left over after the one element the shape declares."""
    header = {"inputs": [{"name": "input", "datatype": "BYTES", "shape": [1],
                          "parameters": {"binary_data_size": 4 * 1_000_001}}]}
    body, headers = framed(header, b"\0\0\0\0" * 1_000_001)
    assert "4000000 bytes left after the 1 BYTES elements" in error(
        client.post(INFER, content=body, headers=headers), 400)
