"""The launcher's ports (``batchserve_planning/serverproc.py``): HTTP and gRPC never the same."""

from __future__ import annotations

import socket

import pytest
from batchserve_planning import serverproc


def test_the_grpc_port_is_never_the_http_port(monkeypatch: pytest.MonkeyPatch) -> None:
    # The kernel may hand out the port it handed out a moment ago, once that socket is closed:
    # a socket that always gets the same port until the third call stands in for it.
    ports = iter([41000, 41000, 41000, 41001])

    class Socket(socket.socket):
        def getsockname(self) -> tuple[str, int]:
            return ("127.0.0.1", next(ports))

    monkeypatch.setattr(socket, "socket", Socket)
    assert serverproc.free_ports(None, grpc=True) == (41000, 41001)
    ports = iter([41000, 41000, 41002])
    assert serverproc.free_ports(41000, grpc=True) == (41000, 41002)  # a port given: not it either
