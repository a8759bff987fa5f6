"""Helpers shared by the tests: model configs on disk, the demo models, the app in-process
(``make_client``), and real server processes (``ServerProcess``, ``running_server``)."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
from batchserve.app import create_app
from batchserve.config import load_models
from batchserve.settings import ServerSettings
from batchserve_planning.serverproc import ManagedServer, toml_value
from fastapi.testclient import TestClient

__all__ = ["PLUGINS", "ROOT", "ServerProcess", "build_demo", "free_port", "inspect_json", "make_client",
           "recommend_status", "running_server", "wait_ready", "write_models"]

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = ROOT / "tests" / "plugins"


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


def echo_to_plan(tmp_path: Path, batch_ms: float, max_batch_size: int = 4) -> tuple[Path, Path]:
    """A repository with the echo test model (``batch_ms`` per batch, whatever its size: a capacity
    known in advance) and a file of its inputs, for ``recommend`` runs; the servers recommend
    starts find the echo backend through ``SERVER_ENV``'s PYTHONPATH, which the caller sets."""
    root = tmp_path / "repo"
    root.mkdir()
    config = write_models(root / "models.toml", [
        {"name": "echo", "backend": "echo", "path": "x", "max_batch_size": max_batch_size,
         "options": {"delay_ms": batch_ms}}], root=root)
    inputs = tmp_path / "numbers.json"
    inputs.write_text("[1.0, 2.0, 3.0]")
    return config, inputs


def recommend_status(out: Path) -> int:
    """The exit status ``recommend`` documents for its report in ``out``: 0 where the pick's re-run
    held, 3 where it did not (a pick all the same, which a run on a shared machine may give)."""
    check = json.loads((out / "results.json").read_text())["verification"] or {}
    return 0 if check.get("holds") else 3


def free_port() -> int:
    """A loopback port for a service the tests start themselves (Docker, Prometheus); batchserve
    servers get theirs from their launcher (``ServerProcess``)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


SERVER_ENV = {"PYTHONPATH": os.pathsep.join([str(PLUGINS), str(ROOT / "server"), str(ROOT)])}
"""A test server imports this checkout's code and the test backends (tests/plugins)."""


def inspect_json(*args: str) -> dict[str, Any]:
    """``batchserve inspect ARGS --json``'s report, run in its own process (inspect tunes the
    allocator and resets the peak RSS of the process it runs in), with this checkout's code."""
    result = subprocess.run([sys.executable, "-m", "batchserve", "inspect", *args, "--json"],
                            capture_output=True, text=True, env={**os.environ, **SERVER_ENV}, timeout=300)
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


class ServerProcess(ManagedServer):
    """A real ``batchserve serve`` process on a free loopback port: the planner's launcher with the
    tests' environment, logging at info (``output()`` has the server's lines); ``wait_ready()``
    before use, ``close()`` after."""

    def __init__(self, config: Path, *, grace_s: float = 10.0, args: Sequence[str] = (),
                 env: Mapping[str, str] | None = None) -> None:
        super().__init__(config, grace_s=grace_s, log_level="info", env={**(env or {}), **SERVER_ENV},
                         args=args)

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        super().wait_ready(timeout_s)


@contextlib.contextmanager
def running_server(config: Path, *, grace_s: float = 10.0, args: Sequence[str] = (),
                   env: Mapping[str, str] | None = None) -> Iterator[ServerProcess]:
    server = ServerProcess(config, grace_s=grace_s, args=args, env=env)
    try:
        server.wait_ready()
        yield server
    finally:
        server.close()


def build_demo(script: str, output: Path) -> Path:
    """Run ``models/<script>``'s ``build(output)``: the demo artifacts `make serve` builds."""
    spec = importlib.util.spec_from_file_location(script.removesuffix(".py"), ROOT / "models" / script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    built: Path = module.build(output)
    return built


def make_client(tmp_path: Path, models: list[dict[str, Any]], **settings: Any) -> TestClient:
    config = write_models(tmp_path / "models.toml", models)
    app = create_app(ServerSettings(config=config, **settings), load_models(config))
    return TestClient(app, raise_server_exceptions=False)


def wait_ready(client: TestClient, timeout_s: float = 60.0) -> None:
    """Until the in-process app's models have all finished loading (ready or failed)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return
        body = client.get("/readyz").json()
        if all(m["state"] != "loading" for m in body["models"].values()):
            return
        time.sleep(0.02)
    raise TimeoutError("models did not finish loading")


def sample(url: str, name: str, **labels: str) -> float:
    """A sample of /metrics, whatever the order of its labels; 0 when the series is absent (a
    counter not yet incremented)."""
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        series, _, value = line.rpartition(" ")
        found, _, rest = series.partition("{")
        if found == name and dict(re.findall(r'(\w+)="([^"]*)"', rest)) == labels:
            return float(value)
    return 0.0
