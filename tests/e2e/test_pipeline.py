"""The shared request path (batchserve/pipeline.py) against a real server: what is refused
before the body is read, what is never read as JSON, and outcomes counted once."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from batchserve.errors import ClientDisconnected, DeadlineExceeded, InvalidInput
from batchserve.preprocessing import Stop, preprocess_items

from tests.support import ServerProcess, running_server, write_models

ROW = [0.0] * 10


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, diabetes_path: Path,
           resnet_weights: Path) -> Iterator[ServerProcess]:
    config = write_models(tmp_path_factory.mktemp("pipeline") / "models.toml", [
        # a short timeout: a request that is never answered shows as a 504 soon
        {"name": "diabetes", "backend": "sklearn", "path": str(diabetes_path), "timeout_ms": 1000},
        {"name": "resnet50", "backend": "resnet50", "path": str(resnet_weights), "max_batch_size": 1},
        {"name": "complex", "backend": "echo", "path": "x", "options": {"complex_output": True}},
        # heavy preprocessing (as image decoding is), 50 or 100 ms per item
        {"name": "one-at-a-time", "backend": "slow-decode", "path": "x", "preprocess_concurrency": 1,
         "options": {"preprocess_ms": 50}},
        {"name": "deadline", "backend": "slow-decode", "path": "x", "options": {"preprocess_ms": 100}},
        {"name": "hang-up", "backend": "slow-decode", "path": "x", "options": {"preprocess_ms": 100}},
    ])
    with running_server(config) as process:
        yield process


def error_type(response: httpx.Response) -> str:
    kind: str = response.json()["error"]["type"]
    return kind


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain",
                                          "text/plain; charset=utf-8"])
@pytest.mark.parametrize("path", ["/predict", "/predict/diabetes"])
def test_bodies_a_cross_site_form_can_send_are_not_read_as_json(
        server: ServerProcess, path: str, content_type: str) -> None:
    body = b'{"model": "diabetes", "inputs": [[0, 0, 0, 0, 0, 0, 0, 0, 0, 0]]}'
    response = httpx.post(server.url + path, content=body, headers={"content-type": content_type})
    assert response.status_code == 415, response.text
    assert error_type(response) == "unsupported_media_type"
    for sent in ({}, {"content-type": "application/json"}):  # no Content-Type at all is JSON
        assert httpx.post(server.url + path, content=body, headers=sent).status_code == 200


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain",
                                          "multipart/form-data; boundary=x"])
def test_v2_refuses_what_a_cross_site_form_can_send(server: ServerProcess, content_type: str) -> None:
    body = b'{"inputs": [{"name": "input", "shape": [1, 10], "datatype": "FP64", "data": ' + \
        str(ROW).encode() + b"}]}"
    url = f"{server.url}/v2/models/diabetes/infer"
    response = httpx.post(url, content=body, headers={"content-type": content_type})
    assert response.status_code == 415, response.text
    for sent in ({}, {"content-type": "application/json"}, {"content-type": "application/octet-stream"}):
        assert httpx.post(url, content=body, headers=sent).status_code == 200


def test_a_query_parameter_of_unicode_digits_is_a_400(server: ServerProcess) -> None:
    for top_k in ("²", "¹²", "①"):  # str.isdigit() is True for these, int() refuses them
        response = httpx.post(f"{server.url}/predict/resnet50", params={"top_k": top_k},
                              content=b"not read", headers={"content-type": "image/jpeg"})
        assert response.status_code == 400, (top_k, response.text)
        assert "top_k must be an integer" in response.json()["error"]["message"]


def status_before_sending_the_body(port: int, path: str, headers: dict[str, str]) -> bytes:
    """The status line the server answers to a request whose body is announced but never sent
    (the connection stays open): the server must answer from the headers alone."""
    head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": "x", **headers}.items())
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\n{head}\r\n".encode())
        answer = b""
        while b"\r\n" not in answer:
            data = sock.recv(4096)  # times out (the test fails) if the server waits for the body
            if not data:
                break
            answer += data
    return answer.partition(b"\r\n")[0]


@pytest.mark.parametrize("path", ["/predict", "/predict/diabetes", "/v2/models/diabetes/infer"])
def test_a_malformed_timeout_header_is_a_422_before_the_body_is_read(
        server: ServerProcess, path: str) -> None:
    headers = {"Content-Type": "application/json", "Content-Length": str(16_000_000),
               "X-Request-Timeout-Ms": "soon"}
    assert status_before_sending_the_body(server.port, path, headers).startswith(b"HTTP/1.1 422")


def test_a_deadline_spent_on_arrival_says_so(server: ServerProcess) -> None:
    """A deadline too short to reach the body (X-Request-Timeout-Ms: 0.001) is a 408 that says it
    passed on arrival, not that the body was late: the whole body was sent at once."""
    response = httpx.post(f"{server.url}/predict/diabetes", json={"inputs": [ROW]}, timeout=30,
                          headers={"X-Request-Timeout-Ms": "0.001"})
    assert response.status_code == 408
    message = response.json()["error"]["message"]
    assert "passed on its arrival" in message and "X-Request-Timeout-Ms" in message, message


def test_a_form_body_is_refused_before_it_is_read(server: ServerProcess) -> None:
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Content-Length": "16000000"}
    assert status_before_sending_the_body(server.port, "/predict", headers).startswith(b"HTTP/1.1 415")


def test_a_v2_tensor_with_zero_rows_is_a_400_at_once(server: ServerProcess) -> None:
    body = {"inputs": [{"name": "input", "shape": [0, 10], "datatype": "FP64", "data": []}]}
    response = httpx.post(f"{server.url}/v2/models/diabetes/infer", json=body, timeout=30)
    assert response.status_code == 400, response.text  # not an orphaned request's 504
    ok = {"inputs": [{"name": "input", "shape": [1, 10], "datatype": "FP64", "data": ROW}]}
    assert httpx.post(f"{server.url}/v2/models/diabetes/infer", json=ok).status_code == 200


def requests_total(url: str, model: str) -> dict[str, float]:
    counts = {}
    prefix = "batchserve_requests_total{"
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(prefix) and f'model="{model}"' in line:
            labels, value = line.rsplit(" ", 1)
            code = labels.split('code="', 1)[1].split('"', 1)[0]
            counts[code] = float(value)
    return counts


def test_an_unexpected_error_is_a_500_counted_once(server: ServerProcess) -> None:
    before = requests_total(server.url, "complex")
    for path, body in [("/predict", {"model": "complex", "inputs": [1]}),
                       ("/v2/models/complex/infer",
                        {"inputs": [{"name": "input", "shape": [1], "datatype": "FP64", "data": [1]}]})]:
        response = httpx.post(server.url + path, json=body)
        assert response.status_code == 500, response.text
        assert "internal error" in response.text
    after = requests_total(server.url, "complex")
    assert after.get("500", 0) - before.get("500", 0) == 2
    assert set(after) == {"500"}  # and under no other code
    assert httpx.get(f"{server.url}/healthz").status_code == 200


# -- heavy preprocessing: bounded, and stopped between items ------------------------------

def described(server: ServerProcess, model: str) -> dict[str, Any]:
    info: dict[str, Any] = httpx.get(f"{server.url}/models/{model}").json()
    return info


def test_heavy_preprocessing_runs_within_the_models_concurrency(server: ServerProcess) -> None:
    async def six_at_once() -> list[int]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            responses = await asyncio.gather(*(
                client.post("/predict", json={"model": "one-at-a-time", "inputs": [value, value]})
                for value in range(6)))
        return [response.status_code for response in responses]

    assert asyncio.run(six_at_once()) == [200] * 6
    info = described(server, "one-at-a-time")
    assert info["preprocessed"] == 12
    assert info["peak"] == 1  # preprocess_concurrency = 1: one request's items at a time


def test_preprocessing_stops_at_the_deadline(server: ServerProcess) -> None:
    # ten items of 100 ms each, and a deadline of 250 ms from arrival
    response = httpx.post(f"{server.url}/predict", json={"model": "deadline", "inputs": [1] * 10},
                          headers={"X-Request-Timeout-Ms": "250"}, timeout=30)
    assert response.status_code == 504, response.text
    assert "while preprocessing" in response.json()["error"]["message"]
    assert described(server, "deadline")["preprocessed"] <= 3  # the rest never started


def rejected(server: ServerProcess, model: str, reason: str) -> float:
    wanted = f'batchserve_rejected_total{{model="{model}",reason="{reason}"}} '
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith(wanted):
            return float(line.split()[-1])
    return 0.0


def test_preprocessing_stops_when_the_client_hangs_up(server: ServerProcess) -> None:
    body = b'{"model": "hang-up", "inputs": [' + b", ".join([b"1"] * 20) + b"]}"  # 20 x 100 ms
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        for _ in range(1500):  # until its preprocessing has started (bounded: 30 s)
            if described(server, "hang-up")["preprocessed"] > 0:
                break
            time.sleep(0.02)
    for _ in range(1500):  # until the server has given up on it (bounded: 30 s)
        if rejected(server, "hang-up", "cancelled") == 1:
            break
        time.sleep(0.02)
    assert rejected(server, "hang-up", "cancelled") == 1
    assert described(server, "hang-up")["preprocessed"] < 20


# -- preprocessing on a worker thread stops between items ----------------------------------

class Counting:
    """A backend stand-in whose ``preprocess`` counts its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.config = type("Config", (), {"name": "counting"})()

    def check_items(self, items: list[Any], parameters: Any) -> list[Any]:
        return items

    def preprocess(self, item: Any, parameters: Any) -> Any:
        self.calls += 1
        if item == "bad":
            raise InvalidInput("bad item")
        return item


def test_preprocessing_does_not_start_past_the_deadline() -> None:
    backend = Counting()
    with pytest.raises(DeadlineExceeded, match="before item 0"):
        preprocess_items(backend, [1, 2, 3], None, Stop(time.monotonic() - 1))  # type: ignore[arg-type]
    assert backend.calls == 0


def test_preprocessing_stops_once_the_client_is_gone() -> None:
    backend = Counting()
    stop = Stop(time.monotonic() + 60)
    stop.gone = True
    with pytest.raises(ClientDisconnected):
        preprocess_items(backend, [1, 2, 3], None, stop)  # type: ignore[arg-type]
    assert backend.calls == 0
    stop.gone = False
    assert preprocess_items(backend, [1, 2], None, stop) == [1, 2]  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="item 1: bad item"):
        preprocess_items(backend, [1, "bad"], None, stop)  # type: ignore[arg-type]


def test_a_trailing_slash_is_a_404_that_says_so_not_an_empty_redirect(server: ServerProcess) -> None:
    response = httpx.post(f"{server.url}/predict/diabetes/", json={"inputs": [ROW]}, timeout=30)
    assert response.status_code == 404, (response.status_code, response.headers, response.text)
    assert error_type(response) == "not_found"
    assert "no trailing slash; send it to /predict/diabetes" in response.json()["error"]["message"]
