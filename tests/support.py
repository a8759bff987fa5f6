"""Helpers shared by the tests: model configs on disk, and a real server process."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
from batchserve_planning.serverproc import free_port, toml_value

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


class ServerProcess:
    """A real ``batchserve serve`` process on a free loopback port."""

    def __init__(self, config: Path, *, grace_s: float = 10.0, args: Sequence[str] = (),
                 env: Mapping[str, str] | None = None) -> None:
        """``args``: more ``serve`` flags; ``env``: more environment (``BATCHSERVE_*`` settings)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environment = {**os.environ, **(env or {}),
                       "PYTHONPATH": os.pathsep.join([str(PLUGINS), str(ROOT / "server"), str(ROOT)])}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "batchserve", "serve", "--config", str(config),
             "--port", str(self.port), "--shutdown-grace-s", str(grace_s), "--log-level", "info", *args],
            env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.output()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"server not ready in {timeout_s} s:\n{self.output()}")

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def output(self) -> str:
        if self.process.poll() is None:
            return "(still running)"
        assert self.process.stdout is not None
        return self.process.stdout.read()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)
        if self.process.stdout is not None:
            self.process.stdout.close()


@contextlib.contextmanager
def running_server(config: Path, *, grace_s: float = 10.0, args: Sequence[str] = (),
                   env: Mapping[str, str] | None = None) -> Iterator[ServerProcess]:
    server = ServerProcess(config, grace_s=grace_s, args=args, env=env)
    try:
        server.wait_ready()
        yield server
    finally:
        server.close()
