"""Helpers shared by the tests: model configs on disk, and real server processes."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from batchserve_planning.load.scrape import ServerError, wait_ready
from batchserve_planning.serverproc import ManagedServer, toml_value

__all__ = ["PLUGINS", "ROOT", "ManagedServer", "ServerError", "free_port", "running_server", "start_server",
           "wait_ready", "write_models"]

PLUGINS = Path(__file__).parent / "plugins"
ROOT = Path(__file__).parent.parent


def write_models(path: Path, models: list[dict[str, Any]], *, root: Path | None = None,
                 require_sha256: bool = False) -> Path:
    """Write a models.toml with one [[models]] table per dict. The repository root defaults to
    the folder above the file's: pytest's base temp folder, which holds the session fixtures'
    artifacts too."""
    lines = ["[repository]", f"root = {toml_value(root or path.parent.parent)}",
             f"require_sha256 = {toml_value(require_sha256)}", ""]
    for model in models:
        lines.append("[[models]]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in model.items())
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def free_port() -> int:
    """A loopback port for a service the tests start themselves (Docker, Prometheus); batchserve
    servers get theirs from their launcher (``start_server``)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


SERVER_ENV = {"PYTHONPATH": os.pathsep.join([str(PLUGINS), str(ROOT / "server"), str(ROOT)])}
"""A test server imports this checkout's code and the test backends (tests/plugins)."""


def start_server(config: Path, *, grace_s: float = 10.0) -> ManagedServer:
    """A real ``batchserve serve`` process on a free loopback port (the planner's launcher), logging
    at info (``output()`` has uvicorn's lines); ``wait_ready()`` before use, ``close()`` after."""
    return ManagedServer(config, grace_s=grace_s, log_level="info", env=SERVER_ENV)


@contextlib.contextmanager
def running_server(config: Path, *, grace_s: float = 10.0) -> Iterator[ManagedServer]:
    server = start_server(config, grace_s=grace_s)
    try:
        server.wait_ready(timeout_s=120)
        yield server
    finally:
        server.close()
