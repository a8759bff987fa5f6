"""Runs the app on uvicorn: the main port, the management port if it has its own, and the
drain on SIGTERM (one grace for all of it, from the signal to the exit)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import Literal

import uvicorn
import uvloop
from starlette.types import ASGIApp

from batchserve.state import AppState

log = logging.getLogger(__name__)


def make_server(app: ASGIApp, port: int, state: AppState, *, lifespan: Literal["on", "off"],
                sock: socket.socket | None = None, uds: str | None = None) -> DrainingServer:
    """A server of ``app`` on ``settings.host:port``, or on ``sock`` (a worker's listening
    socket: shared from the supervisor, or its own SO_REUSEPORT one), or on the Unix socket
    ``uds``."""
    settings = state.settings
    config = uvicorn.Config(
        app, host=settings.host, port=port, uds=uds, log_level=settings.log_level,
        lifespan=lifespan, access_log=False, loop="uvloop", http="httptools",
        limit_concurrency=settings.limit_concurrency, backlog=LISTEN_BACKLOG,
        proxy_headers=False)  # no client address is used: no X-Forwarded-For to parse per request
    return DrainingServer(config, state, sock)


LISTEN_BACKLOG = 2048
"""Connections the kernel may queue before they are accepted (uvicorn's default)."""


def listening_socket(host: str, port: int, *, reuse_port: bool, listen: bool = True) -> socket.socket:
    """A TCP socket bound to ``host:port`` (port 0: a free one), listening unless ``listen`` is
    false; with ``reuse_port``, one of a group the kernel spreads connections over."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    if listen:
        sock.listen(LISTEN_BACKLOG)
    return sock


def run_servers(servers: list[DrainingServer], state: AppState) -> None:
    """Serve until SIGTERM or SIGINT, then drain within the one grace, and return.

    The servers (the main port, and the management port if it has its own) share one event
    loop and one drain: the signal fixes its deadline (``AppState.begin_drain``) and each stage
    gets what is left of it. A second SIGINT stops at once.
    """
    def on_signal(sig: int, frame: FrameType | None) -> None:
        if state.drain_deadline_s is not None and sig == signal.SIGINT:
            state.drain_deadline_s = time.monotonic()  # a second Ctrl+C: nothing left to wait for
            for server in servers:
                server.force_exit = True
        if state.drain_deadline_s is None:
            state.begin_drain()
            # The backstop if a stage overstays the grace (a model load that won't end, say).
            backstop = threading.Timer(state.drain_left_s() + _OVERSTAY_S, _overstayed)
            backstop.daemon = True
            backstop.start()
        for server in servers:
            server.should_exit = True

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_serve_all(servers))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    # Threads still running model code (a batch longer than the grace) would keep the process
    # alive past it (the interpreter joins executor threads at exit): their answers can no
    # longer be sent, so they get what is left of the grace, then are abandoned.
    busy = [t for t in threading.enumerate() if t is not threading.current_thread() and not t.daemon]
    for thread in busy:
        thread.join(timeout=state.drain_left_s())
    if any(t.is_alive() for t in busy):
        log.warning("exiting with model code still running past the shutdown grace")
        _exit_now(0)


async def _serve_all(servers: list[DrainingServer]) -> None:
    await asyncio.gather(*(server.serve([server.sock] if server.sock else None) for server in servers))


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose signals and graceful-shutdown timeout come from the shared drain."""

    def __init__(self, config: uvicorn.Config, state: AppState,
                 sock: socket.socket | None = None) -> None:
        super().__init__(config)
        self.state = state
        self.sock = sock

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # run_servers handles the signals once for every server

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # What is left of the one grace; never None (uvicorn's "wait forever"), so 0 is no wait.
        # uvicorn types it int, and hands it to asyncio.wait_for, which takes any number.
        self.config.timeout_graceful_shutdown = self.state.drain_left_s()  # type: ignore[assignment]
        await super().shutdown(sockets)


_OVERSTAY_S = 5.0
"""How long past the grace the drain may take before the process exits anyway (status 1)."""


def _overstayed() -> None:
    log.error("shutdown overstayed its grace by %.0f s; exiting", _OVERSTAY_S)
    _exit_now(1)


def _exit_now(code: int) -> None:
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
