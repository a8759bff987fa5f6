"""The launcher's ports (``batchserve_planning/serverproc.py``): HTTP and gRPC never the same."""

from __future__ import annotations

import socket

import pytest
from batchserve_planning import serverproc


def _kernel(monkeypatch: pytest.MonkeyPatch, *handed_out: int) -> None:
    """Sockets that get these ports, in order, as the kernel might hand them out."""
    ports = iter(handed_out)

    class Socket(socket.socket):
        def getsockname(self) -> tuple[str, int]:
            return ("127.0.0.1", next(ports))

    monkeypatch.setattr(socket, "socket", Socket)


def test_the_grpc_port_is_never_the_http_port(monkeypatch: pytest.MonkeyPatch) -> None:
    # The kernel may hand out the port it handed out a moment ago, once that socket is closed:
    # a socket that gets the same port until the fourth call stands in for it.
    _kernel(monkeypatch, 41000, 41000, 41000, 41001)
    assert serverproc.free_ports(None, grpc=True) == (41000, 41001)


def test_the_grpc_port_is_not_a_port_given(monkeypatch: pytest.MonkeyPatch) -> None:
    _kernel(monkeypatch, 41000, 41000, 41002)
    assert serverproc.free_ports(41000, grpc=True) == (41000, 41002)
