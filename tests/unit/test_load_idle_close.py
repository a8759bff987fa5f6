"""The open loop's connections outlive a server's keep-alive timeout: at a few requests a second
most of them wait idle, and the server closes them (batchserve after 5 s). A closed one is
skipped and replaced, never written to; the run keeps its arrivals. (On resnet50's `--hardware`
re-run, at 6.7 requests/s over 512 connections, writing to one such connection ended the
arrivals after a few seconds and the re-run's arrived rate read 2.2/s.)"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
from batchserve_planning.load.client import build_request
from batchserve_planning.load.generator import run_load
from batchserve_planning.load.results import summarize
from batchserve_planning.load.shared import LoadSpec

IDLE_CLOSE_S = 0.05
"""The test server's keep-alive timeout: shorter than the Poisson gaps at ``RATE``."""
RATE, COUNT = 4.0, 8


class _Server:
    """HTTP/1.1 keep-alive on a free port: answers each request 200 at once, closes a connection
    that waits ``IDLE_CLOSE_S`` for its next request (as granian's header-read timeout does)."""

    def __init__(self) -> None:
        self.port = 0
        self.connections = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)

    def __enter__(self) -> _Server:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *_: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_CLOSE_S)
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
def server() -> Iterator[_Server]:
    with _Server() as running:
        yield running


@pytest.mark.timeout(60)
@pytest.mark.parametrize("processes", [1, 2])
def test_connections_the_server_closed_while_idle_are_replaced(server: _Server, processes: int) -> None:
    request = build_request("127.0.0.1", server.port, "/predict/m", b"{}", "application/json")
    spec = LoadSpec("127.0.0.1", server.port, (request,), mode="open", rate=RATE, concurrency=4,
                    duration_s=None, count=COUNT, warmup_s=0.0, timeout_s=5.0, seed=3)
    summary = summarize(run_load(spec, processes=processes))
    # Every arrival sent and answered: none lost to a closed connection, none an error.
    assert summary.status_counts == {"200": COUNT}
    # The Poisson gaps (mean 250 ms) are longer than the keep-alive: connections were reopened.
    assert server.connections > 4
