"""SIGTERM against a real server: one grace for the whole drain, a grace of 0 is no wait, and
what the server answers while it drains."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h11
import httpx
import pytest

from tests.support import ServerProcess, write_models

pytestmark = pytest.mark.slow

BATCH_S = 120.0
"""How long the model takes on a batch: far past any grace here."""
MARGIN_S = 20.0
"""What the exit may take past the grace on a loaded machine (the bound is on a 2 min batch)."""


def dispatched(url: str, model: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    found = re.search(rf'^batchserve_batch_size_count{{model="{model}"}} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


@pytest.mark.parametrize("grace_s", [0.0, 3.0])
def test_sigterm_with_a_batch_longer_than_the_grace_exits_0_within_it(tmp_path: Path,
                                                                     grace_s: float) -> None:
    # Before: uvicorn's grace, then the batchers' again, then the exit waited for the batch's
    # thread (2 min); a grace of 0 meant uvicorn waited forever for the request.
    config = write_models(tmp_path / "models.toml", [{
        "name": "slow", "backend": "echo", "path": "x", "timeout_ms": 600_000,
        "options": {"delay_ms": BATCH_S * 1000, "slow_on": 1}}])
    server = ServerProcess(config, grace_s=grace_s)
    try:
        server.wait_ready()
        request = threading.Thread(target=lambda: _post_ignoring_errors(server.url), daemon=True)
        request.start()
        give_up = time.monotonic() + 60
        while dispatched(server.url, "slow") < 1 and time.monotonic() < give_up:
            time.sleep(0.05)
        assert dispatched(server.url, "slow") >= 1, "the slow batch never started"
        signalled = time.monotonic()
        server.terminate()
        code = server.process.wait(timeout=BATCH_S + 60)
        took = time.monotonic() - signalled
        assert code == 0, server.output()
        assert took < grace_s + MARGIN_S, (took, server.output())
    finally:
        server.close()


def _post_ignoring_errors(url: str) -> None:
    # Dropped at the end of the grace: the connection closes without an answer.
    with contextlib.suppress(httpx.TransportError):
        httpx.post(f"{url}/predict", json={"model": "slow", "inputs": [1]}, timeout=BATCH_S + 60)


# -- what a draining server answers --------------------------------------------------------
#
# granian closes its listening socket at the signal, so a fresh connection sees nothing of the
# drain but a refusal. Connections made before it: one whose request is in progress is kept until
# that request is answered (with Connection: close), then closed; idle ones are closed; requests
# pipelined behind one in progress never start (the client sees the connection close after the
# answer before them, and may send them elsewhere). So: one request held in the model, requests
# pipelined behind it on the same connection, and a request on another connection whose body is
# still arriving: both admitted requests are answered, nothing else is.

def test_requests_in_progress_at_sigterm_are_answered_and_their_connections_closed(
        tmp_path: Path) -> None:
    if not Path("/proc/net/tcp").exists():
        pytest.skip("needs Linux's /proc/net/tcp to see that the server read what was sent")
    release, release_partial = tmp_path / "release", tmp_path / "release-partial"
    started = tmp_path / "started"
    config = write_models(tmp_path / "models.toml", [{
        "name": "m", "backend": "echo", "path": "x", "max_batch_size": 1, "timeout_ms": 120_000,
        "options": {"holds": {"1": str(release), "2": str(release_partial)},
                    "started": str(started)}}])
    server = ServerProcess(config, grace_s=60.0)
    try:
        server.wait_ready()
        with (socket.create_connection(("127.0.0.1", server.port), timeout=60) as held,
              socket.create_connection(("127.0.0.1", server.port), timeout=60) as partial):
            _drain_with(server, held, partial, release, release_partial, started)
        assert server.process.wait(timeout=60 + MARGIN_S) == 0, server.output()
    finally:
        server.close()


def _drain_with(server: ServerProcess, held: socket.socket, partial: socket.socket,
                release: Path, release_partial: Path, started: Path) -> None:
    # 1. A request whose batch is held in the model until `release` exists.
    held.sendall(_post("/predict/m", b'{"inputs": [1]}'))
    until(lambda: started.exists() and " 1.0\n" in started.read_text(), "the held batch started")
    # 2. Behind it on its connection (they would start as the one before ends): readiness, a new
    #    inference request, and the metrics.
    held.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"
                 + _post("/predict/m", b'{"inputs": [3]}')
                 + b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    until(lambda: read_by_server(held), "the server read the pipelined requests")
    # 3. A request admitted before the signal whose body has not all arrived: it was
    #    admitted with its headers, and is served once its body is complete.
    request = _post("/predict/m", b'{"inputs": [2]}')
    cut = len(request) - 6  # within the body
    partial.sendall(request[:cut])
    until(lambda: read_by_server(partial), "the server read the partial request")
    # Its task was scheduled as its headers were read: it has run to the body read (and
    # the draining check before it) by the time a request that comes after is answered.
    assert httpx.get(f"{server.url}/healthz", timeout=30).status_code == 200

    server.terminate()
    until(lambda: refused(server.port), "the listening socket closed: the drain began")
    partial.sendall(request[cut:])
    release.touch()

    (admitted,) = read_responses(held, 1)
    assert admitted.status == 200 and json.loads(admitted.body) == {"model": "m", "outputs": [2.0]}
    assert admitted.headers["connection"] == "close"
    assert held.recv(1) == b""  # closed after it: the requests pipelined behind it never started
    assert "3.0" not in started.read_text().split()[1::2]  # the pipelined row never ran

    release_partial.touch()
    (finished,) = read_responses(partial, 1)
    assert finished.status == 200 and json.loads(finished.body)["outputs"] == [4.0], finished
    assert finished.headers["connection"] == "close"
    assert partial.recv(1) == b""


def _post(path: str, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def until(check: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    give_up = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < give_up, f"never: {what}"
        time.sleep(0.01)


def _sample(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        found, _, rest = series.partition("{")
        if found == name and dict(re.findall(r'(\w+)="([^"]*)"', rest)) == labels:
            return float(value)
    return None


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def read_by_server(sock: socket.socket) -> bool:
    """Whether the server has read everything sent on ``sock``: the kernel's queues of the two
    ends of the loopback connection (``/proc/net/tcp``), the client's of bytes not yet
    acknowledged and the server's of bytes received that it has not read, are both empty."""
    queues = _tcp_queues()
    client, server = sock.getsockname(), sock.getpeername()
    return queues.get((client, server), (1, 1))[0] == 0 and queues.get((server, client), (1, 1))[1] == 0


def _tcp_queues() -> dict[tuple[tuple[str, int], tuple[str, int]], tuple[int, int]]:
    """(local, remote) -> (tx_queue, rx_queue) of every IPv4 TCP socket of this machine."""
    def address(text: str) -> tuple[str, int]:
        host, port = text.split(":")
        return socket.inet_ntoa(int(host, 16).to_bytes(4, sys.byteorder)), int(port, 16)

    queues = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        tx, rx = fields[4].split(":")
        queues[address(fields[1]), address(fields[2])] = int(tx, 16), int(rx, 16)
    return queues


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def read_responses(sock: socket.socket, count: int) -> list[Answer]:
    """The next ``count`` responses on ``sock`` (to requests sent pipelined, none of them HEAD)."""
    answers: list[Answer] = []
    leftover = b""
    for _ in range(count):
        parser = h11.Connection(h11.CLIENT)  # one per response: h11 doesn't pipeline requests
        parser.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
        parser.send(h11.EndOfMessage())
        if leftover:  # (b"" would tell h11 the connection closed)
            parser.receive_data(leftover)
        body = b""
        while True:
            event = parser.next_event()
            if event is h11.NEED_DATA:
                parser.receive_data(sock.recv(65536))
            elif isinstance(event, h11.Response):
                answer = Answer(event.status_code, {k.decode(): v.decode() for k, v in event.headers}, b"")
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise AssertionError(f"unexpected {event!r} in response {len(answers)}")
        answer.body = body
        answers.append(answer)
        leftover = parser.trailing_data[0]
    assert leftover == b"", leftover
    return answers
