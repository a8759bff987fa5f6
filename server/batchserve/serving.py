"""Runs the apps on granian (its embedded server, RSGI interface, in our own uvloop event loop):
the main port, the management port if it has its own, a worker's peer socket; and the drain on
SIGTERM, one grace for all of it, from the signal to the exit.

granian is used through its public interface only: ``granian.server.embed.Server`` serving an
RSGI application (``rsgi.RsgiApp``), ``serve()`` and ``stop()``. Its listeners always set
SO_REUSEPORT, and it takes no socket from a parent: so a port is first reserved here with a
socket bound (not listening) with SO_REUSEPORT, which resolves port 0 and lets several worker
processes bind the same port (the kernel spreads connections over the listening ones).

The drain: the listeners close at once (granian's ``stop``), requests in flight finish, and
those still running when the grace is spent are cancelled (answered 503); then the apps'
lifespans end (the batchers get what is left of the grace).
"""

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
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import uvloop
from fastapi import FastAPI
from granian.constants import HTTPModes, Interfaces
from granian.http import HTTP1Settings
from granian.log import LogLevels
from granian.server.embed import Server

from batchserve.access_log import AccessLog
from batchserve.fastpath import BatchserveApp
from batchserve.rsgi import RsgiApp
from batchserve.state import AppState

log = logging.getLogger(__name__)

LISTEN_BACKLOG = 2048
"""Connections the kernel may queue before they are accepted."""
HEADER_READ_TIMEOUT_MS = 5000
"""How long a connection may take to send a request's headers, waiting for its next request
included: an idle keep-alive connection is closed after this (uvicorn's keep-alive timeout was
5 s too), and so is one that sends its headers too slowly."""
_LEVELS = {"critical": LogLevels.critical, "error": LogLevels.error, "warning": LogLevels.error,
           "info": LogLevels.error, "debug": LogLevels.debug, "trace": LogLevels.debug}
"""granian's own log level for ours: its warnings and notices (every embedded start says it is
experimental) only at debug."""


class Served:
    """One app on one port (or Unix socket), and its lifespan if it runs one."""

    def __init__(self, app: FastAPI, state: AppState, *, lifespan: bool, port: int,
                 uds: str | None = None) -> None:
        settings = state.settings
        self.app = app
        self.lifespan = lifespan
        self.port = port
        self.uds = uds
        self.where = uds if uds else f"http://{settings.host}:{port}"
        self.front = RsgiApp(app, app.fast_path if isinstance(app, BatchserveApp) else None,
                             settings.limit_concurrency, AccessLog() if settings.access_log else None)
        self.server = Server(
            self.front, address=settings.host, port=port, uds=Path(uds) if uds else None,
            interface=Interfaces.RSGI, http=HTTPModes.auto, websockets=False, backlog=LISTEN_BACKLOG,
            # granian's backpressure bounds connections, not requests: requests past
            # limit_concurrency are refused by RsgiApp; connections past twice it wait to be accepted
            backpressure=2 * settings.limit_concurrency,
            http1_settings=HTTP1Settings(header_read_timeout=HEADER_READ_TIMEOUT_MS),
            log_level=_LEVELS.get(settings.log_level, LogLevels.error), log_access=False)


    async def serve(self) -> None:
        await self.server.serve()

    def stop(self) -> None:
        """Close the listener at once (granian's ``stop``: it waits for nothing)."""
        self.server.stop()  # type: ignore[no-untyped-call]  # granian leaves it untyped

    @property
    def in_flight(self) -> set[asyncio.Task[Any]]:
        return self.front.in_flight


class Listener(Protocol):
    """What ``Servers`` runs: an HTTP server (``Served``) or the gRPC one (``grpc_api/server.py``)."""

    port: int
    uds: str | None
    where: str

    async def serve(self) -> None: ...
    def stop(self) -> None: ...
    @property
    def in_flight(self) -> set[asyncio.Task[Any]]: ...


def make_server(app: FastAPI, port: int, state: AppState, *, lifespan: Literal["on", "off"],
                uds: str | None = None) -> Served:
    """A server of ``app`` on ``settings.host:port`` (a port ``reserve_port`` holds), or on the
    Unix socket ``uds``."""
    return Served(app, state, lifespan=lifespan == "on", port=port, uds=uds)


def reserve_port(host: str, port: int) -> socket.socket:
    """Hold ``host:port`` (0: a free one; the socket's name says which) for granian's listeners,
    which bind it with SO_REUSEPORT: bound, never listening, so no connection waits on it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


class Servers:
    """Servers sharing one event loop and one drain."""

    def __init__(self, servers: Sequence[Listener], state: AppState) -> None:
        self.servers = servers
        self.state = state
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def stop(self) -> None:
        """Begin the drain, as SIGTERM does; from any thread."""
        self.state.begin_drain()
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    def _on_signal(self, sig: int) -> None:
        state = self.state
        if state.drain_deadline_s is not None and sig == signal.SIGINT:
            state.drain_deadline_s = time.monotonic()  # a second Ctrl+C: nothing left to wait for
        if state.drain_deadline_s is None:
            state.begin_drain()
            # The backstop if a stage overstays the grace (a model load that won't end, say).
            backstop = threading.Timer(state.drain_left_s() + _OVERSTAY_S, _overstayed)
            backstop.daemon = True
            backstop.start()
        assert self._stop is not None
        self._stop.set()

    async def serve(self, *, signals: bool = True) -> None:
        """Serve until SIGTERM or SIGINT (with ``signals``) or ``stop``, then drain."""
        self._loop = loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal, sig)
        async with contextlib.AsyncExitStack() as lifespans:
            for served in self.servers:
                if isinstance(served, Served) and served.lifespan:
                    await lifespans.enter_async_context(served.app.router.lifespan_context(served.app))
            serving = [asyncio.create_task(s.serve(), name=f"serve-{s.port}") for s in self.servers]
            for served in self.servers:  # a worker's Unix socket (its peers') is no address to give
                log.log(logging.DEBUG if served.uds else logging.INFO, "serving on %s", served.where)
            stopped = asyncio.create_task(self._stop.wait())
            await asyncio.wait([*serving, stopped], return_when=asyncio.FIRST_COMPLETED)
            self.state.begin_drain()
            for served in self.servers:
                served.stop()
            in_flight = set().union(*(s.in_flight for s in self.servers))
            log.info("draining: the listeners are closed; waiting up to %.1f s for %d requests in "
                     "flight", self.state.drain_left_s(), len(in_flight))
            if in_flight:
                _, late = await asyncio.wait(in_flight, timeout=self.state.drain_left_s())
                if late:
                    log.warning("cancelling %d requests still running past the shutdown grace", len(late))
                for task in late:
                    task.cancel()
            stopped.cancel()
            for done in await asyncio.gather(*serving, return_exceptions=True):
                if isinstance(done, BaseException) and not isinstance(done, asyncio.CancelledError):
                    raise done
        log.info("shutdown complete")


def run_servers(servers: Sequence[Listener], state: AppState) -> None:
    """Serve until SIGTERM or SIGINT, then drain within the one grace, and return.

    The servers (the main port, the management port if it has its own, the gRPC port, a worker's
    peer socket) share one event loop and one drain: the signal fixes its deadline (``AppState.begin_drain``)
    and each stage gets what is left of it. A second SIGINT stops at once.
    """
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(Servers(servers, state).serve())
    # Threads still running model code (a batch longer than the grace) would keep the process
    # alive past it (the interpreter joins executor threads at exit): their answers can no
    # longer be sent, so they get what is left of the grace, then are abandoned.
    busy = [t for t in threading.enumerate() if t is not threading.current_thread() and not t.daemon]
    for thread in busy:
        thread.join(timeout=state.drain_left_s())
    if any(t.is_alive() for t in busy):
        log.warning("exiting with model code still running past the shutdown grace")
        _exit_now(0)


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
