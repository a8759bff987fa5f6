"""Inference requests over HTTP/1.1 on a real server in this process (a thread), fed by raw
sockets: keep-alive, pipelining, connection close, the concurrency limit, disconnects, errors,
reloads, and each request's stages timed (``batchserve/lifecycle.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import httpx
import orjson
import pytest
import uvloop
from batchserve.app import create_app
from batchserve.config import load_models
from batchserve.lifecycle import Call
from batchserve.metrics import STAGES
from batchserve.pipeline import OFFLOAD_OUTPUTS
from batchserve.serving import Servers, make_server, reserve_port
from batchserve.settings import ServerSettings
from pydantic import SecretStr

from tests.support import write_models


class Served:
    """A server on a free port."""

    def __init__(self, port: int) -> None:
        self.port = port

    @contextlib.contextmanager
    def connect(self) -> Iterator[tuple[socket.socket, BinaryIO]]:
        """A connection, and the stream its answers are read from."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock, \
                sock.makefile("rb") as stream:
            yield sock, stream

    def metric(self, line_start: str) -> float:
        text = httpx.get(f"http://127.0.0.1:{self.port}/metrics").text
        values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start)]
        return sum(values)


@contextlib.contextmanager
def serving(tmp_path: Path, models: list[dict[str, Any]], **settings: Any) -> Iterator[Served]:
    config = write_models(tmp_path / "models.toml", models)
    app = create_app(ServerSettings(config=config, **settings), load_models(config))
    sock = reserve_port("127.0.0.1", 0)
    port = sock.getsockname()[1]
    served = Served(port)
    servers = Servers([make_server(app, port, app.state.batchserve, lifespan="on")],
                      app.state.batchserve)

    def run() -> None:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(servers.serve(signals=False))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    break
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.05)
        yield served
    finally:
        servers.stop()
        thread.join(timeout=30)
        sock.close()


def post(path: str, payload: Any, *, headers: str = "", version: str = "1.1") -> bytes:
    body = orjson.dumps(payload)
    return (f"POST {path} HTTP/{version}\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{headers}\r\n").encode() + body


def read_response(stream: BinaryIO) -> tuple[int, dict[str, str], Any]:
    status = int(stream.readline().split()[1])
    headers: dict[str, str] = {}
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    body = stream.read(int(headers["content-length"]))
    return status, headers, orjson.loads(body) if "json" in headers.get("content-type", "") else body


def echo(name: str = "echo", **options: Any) -> dict[str, Any]:
    return {"name": name, "backend": "echo", "path": "x", "max_batch_size": 8, "options": options}


def test_inference_posts_are_answered_on_a_kept_alive_connection(tmp_path: Path) -> None:
    with serving(tmp_path, [echo()]) as served, served.connect() as (sock, stream):
        sock.sendall(post("/predict/echo", {"inputs": [1, 2]}))
        status, headers, body = read_response(stream)
        assert (status, body) == (200, {"model": "echo", "outputs": [2.0, 4.0]})
        assert headers["content-type"] == "application/json"
        assert "date" in headers and headers["server"] == "granian"  # the HTTP server's own headers
        assert "connection" not in headers  # kept alive: the next request uses the same socket
        sock.sendall(post("/predict", {"model": "echo", "inputs": [3]}))
        assert read_response(stream)[2] == {"model": "echo", "outputs": [6.0]}
        sock.sendall(post("/v2/models/echo/infer", {"inputs": [
            {"name": "input", "shape": [1], "datatype": "FP64", "data": [5.0]}]}))
        status, _, v2 = read_response(stream)
        assert status == 200 and [float(x) for x in v2["outputs"][0]["data"]] == [10.0]
        assert served.metric('batchserve_requests_total{code="200",model="echo"}') == 3


def test_a_body_that_arrives_after_its_headers_is_served(tmp_path: Path) -> None:
    with serving(tmp_path, [echo()]) as served, served.connect() as (sock, stream):
        request = post("/predict/echo", {"inputs": [1, 2, 3]})
        head, body = request[:-5], request[-5:]
        sock.sendall(head)
        time.sleep(0.2)  # the headers and the body's start are parsed, in a read of their own
        sock.sendall(body)
        assert read_response(stream)[2] == {"model": "echo", "outputs": [2.0, 4.0, 6.0]}


def test_pipelined_requests_are_answered_in_the_order_they_came(tmp_path: Path) -> None:
    release = tmp_path / "release"
    models = [echo("slow", holds={"1": str(release)}), echo("fast")]
    with serving(tmp_path, models) as served, served.connect() as (sock, stream):
        sock.sendall(post("/predict/slow", {"inputs": [1]}) + post("/predict/fast", {"inputs": [3]}))
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):  # the fast one's answer does not overtake the slow one
            sock.recv(1)
        sock.settimeout(10)
        release.touch()
        assert read_response(stream)[2] == {"model": "slow", "outputs": [2.0]}
        assert read_response(stream)[2] == {"model": "fast", "outputs": [6.0]}


@pytest.mark.parametrize(("headers", "version"), [("Connection: close\r\n", "1.1"), ("", "1.0")])
def test_a_connection_the_client_ends_is_closed_after_the_answer(tmp_path: Path, headers: str,
                                                                 version: str) -> None:
    with serving(tmp_path, [echo()]) as served, served.connect() as (sock, stream):
        sock.sendall(post("/predict/echo", {"inputs": [1]}, headers=headers, version=version))
        status, answered, _ = read_response(stream)
        assert status == 200 and answered.get("connection", "close") == "close"
        assert stream.read() == b""  # closed by the server


def test_a_client_that_goes_away_has_its_queued_rows_abandoned(tmp_path: Path) -> None:
    release, record = tmp_path / "release", tmp_path / "record"
    model = echo(holds={"1": str(release)}, record=str(record)) | {"max_batch_size": 1}
    with serving(tmp_path, [model]) as served, served.connect() as (held, held_stream):
        held.sendall(post("/predict/echo", {"inputs": [1]}))  # its batch holds the model
        time.sleep(0.2)
        with served.connect() as (leaving, _):
            leaving.sendall(post("/predict/echo", {"inputs": [5]}))  # queued behind it
            time.sleep(0.2)
        deadline = time.monotonic() + 10
        while served.metric('batchserve_rejected_total{model="echo",reason="cancelled"}') < 1:
            assert time.monotonic() < deadline, "the abandoned request was not counted"
            time.sleep(0.05)
        release.touch()
        assert read_response(held_stream)[2] == {"model": "echo", "outputs": [2.0]}
        assert served.metric('batchserve_requests_total{code="499",model="echo"}') == 1
        assert record.read_text().split() == ["1.0"]  # the abandoned row never ran


def test_heavy_large_and_body_named_requests_are_served(tmp_path: Path) -> None:
    models = [echo(), {"name": "decode", "backend": "slow-decode", "path": "x", "max_batch_size": 8}]
    with serving(tmp_path, models) as served, served.connect() as (sock, stream):
        many = list(range(OFFLOAD_OUTPUTS + 1))  # encoded on a worker thread
        sock.sendall(post("/predict/echo", {"inputs": many}))
        assert read_response(stream)[2]["outputs"] == [2.0 * x for x in many]
        sock.sendall(post("/predict/decode", {"inputs": [4]}))  # heavy preprocessing
        assert read_response(stream)[2] == {"model": "decode", "outputs": [8.0]}
        sock.sendall(post("/predict", {"model": "decode", "inputs": [5]}))  # named in the body
        assert read_response(stream)[2] == {"model": "decode", "outputs": [10.0]}
        sock.sendall(post("/predict/echo", {"inputs": [6]}, headers="Expect: 100-continue\r\n"))
        assert stream.readline().startswith(b"HTTP/1.1 100")
        stream.readline()
        assert read_response(stream)[2] == {"model": "echo", "outputs": [12.0]}


def test_errors_are_answered_and_counted(tmp_path: Path) -> None:
    with serving(tmp_path, [echo()]) as served, served.connect() as (sock, stream):
        sock.sendall(post("/predict/nope", {"inputs": [1]}))
        status, _, body = read_response(stream)
        assert status == 404 and body["error"]["type"] == "model_not_found"
        bad = b"{not json"
        sock.sendall(b"POST /predict/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(bad), bad))
        status, _, body = read_response(stream)
        assert status == 422 and body["error"]["type"] == "malformed_request"
        sock.sendall(post("/predict/echo", {"inputs": ["a"]}))
        status, _, body = read_response(stream)
        assert status == 400 and "item 0" in body["error"]["message"]
        sock.sendall(post("/predict/echo", {"inputs": [1]}, headers="X-Request-Timeout-Ms: 0\r\n"))
        assert read_response(stream)[0] == 422
        # the header is refused before the model is looked up, so it counts for no model
        assert served.metric('batchserve_requests_total{code="422",model="echo"}') == 1
        assert served.metric('batchserve_requests_total{code="400",model="echo"}') == 1


def test_the_concurrency_limit_is_a_503(tmp_path: Path) -> None:
    release = tmp_path / "release"
    with serving(tmp_path, [echo(holds={"1": str(release)})], limit_concurrency=1) as served, \
            served.connect() as (held, held_stream), served.connect() as (sock, stream):
        held.sendall(post("/predict/echo", {"inputs": [1]}))  # in flight: the limit is reached
        time.sleep(0.2)
        sock.sendall(post("/predict/echo", {"inputs": [2]}))
        status, headers, body = read_response(stream)
        assert status == 503 and headers["retry-after"] == "1"
        assert body["error"]["type"] == "overloaded"
        assert "limit of 1 request" in body["error"]["message"]
        sock.sendall(post("/v2/models/echo/infer", {"inputs": []}))  # v2's clients get v2's shape
        status, _, body = read_response(stream)
        assert status == 503 and "limit of 1 request" in body["error"]
        release.touch()
        assert read_response(held_stream)[2] == {"model": "echo", "outputs": [2.0]}
        sock.sendall(post("/predict/echo", {"inputs": [3]}))  # the limit is free again
        assert read_response(stream)[2] == {"model": "echo", "outputs": [6.0]}


def test_an_idle_connection_is_closed_after_the_keep_alive_timeout(tmp_path: Path) -> None:
    with serving(tmp_path, [echo()]) as served, served.connect() as (sock, stream):
        sock.sendall(post("/predict/echo", {"inputs": [1]}))
        assert read_response(stream)[0] == 200
        started = time.monotonic()
        assert stream.read() == b""  # serving.HEADER_READ_TIMEOUT_MS, 5 s
        assert 4 < time.monotonic() - started < 9


def test_a_request_served_here_leaves_no_reference_cycle(tmp_path: Path) -> None:
    # A cycle per request would be freed only by the collector, whose passes then land inside
    # batches run on the event loop (held for milliseconds: on_loop_when_cheap's strikes).
    kinds = (Call,)
    with serving(tmp_path, [echo()]) as served, served.connect() as (sock, stream):
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)  # what the collector frees is kept in gc.garbage
        try:
            for value in range(20):
                sock.sendall(post("/predict/echo", {"inputs": [value]}))
                assert read_response(stream)[0] == 200
            gc.collect()
            cyclic = [obj for obj in gc.garbage if isinstance(obj, kinds)]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
        assert cyclic == []


def test_a_request_queued_when_its_model_is_reloaded_is_served_by_the_new_version(
        tmp_path: Path) -> None:
    # Row 1 holds the old version's thread past the reload's grace: it and row 2, queued behind
    # it, are stopped there (ShuttingDown) and must move to the new version, not be answered 503.
    release = tmp_path / "release"
    model = echo(holds={"1": str(release)}) | {"max_batch_size": 1}
    token = "correct-horse-battery-staple"
    with serving(tmp_path, [model], management_token=SecretStr(token), shutdown_grace_s=0.3) \
            as served, served.connect() as (held, held_stream), served.connect() as (queued, stream):
        held.sendall(post("/predict/echo", {"inputs": [1]}))
        time.sleep(0.2)
        queued.sendall(post("/predict/echo", {"inputs": [2]}))
        time.sleep(0.2)
        write_models(tmp_path / "models.toml", [echo() | {"max_batch_size": 1}])  # no hold
        reloaded = httpx.post(f"http://127.0.0.1:{served.port}/v2/repository/models/echo/load",
                              headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert reloaded.status_code == 200
        assert read_response(stream)[2] == {"model": "echo", "outputs": [4.0]}  # by the new one
        # row 1, stopped while it ran past the grace, moved too (and ran again there)
        assert read_response(held_stream)[2] == {"model": "echo", "outputs": [2.0]}
        release.touch()  # the old version's thread


def test_every_stage_of_a_successful_request_is_timed(tmp_path: Path) -> None:
    slow = {"name": "decode", "backend": "slow-decode", "path": "x", "max_batch_size": 8}
    with serving(tmp_path, [echo(), slow]) as served, served.connect() as (sock, stream):
        for _ in range(3):
            sock.sendall(post("/predict/echo", {"inputs": [1, 2]}))
            assert read_response(stream)[0] == 200
        sock.sendall(post("/predict/decode", {"inputs": [4]}))  # preprocessed on a thread
        assert read_response(stream)[0] == 200
        sock.sendall(post("/predict/echo", {"inputs": ["a"]}))  # a 400 is not a success
        assert read_response(stream)[0] == 400
        for model, count in (("echo", 3), ("decode", 1)):
            for stage in STAGES:
                series = f'batchserve_stage_duration_seconds_count{{model="{model}",stage="{stage}"}}'
                assert served.metric(series) == count, series
        preprocessing = served.metric(
            'batchserve_stage_duration_seconds_sum{model="decode",stage="compute_input"}')
        assert preprocessing > 0  # the slow decoder's time is in compute_input
