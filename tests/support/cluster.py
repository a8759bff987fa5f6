"""Worker processes of one server, started by the tests themselves: each a real server over
``create_app`` with ``AppState.cluster`` set, serving its own loopback port and its peer API on
its Unix socket, as a worker of ``batchserve serve --workers N`` does, but each on a port of
its own, so that a test chooses which worker a request reaches.

``python -m tests.support.cluster --run-dir D --index I --count N --config C --port P`` runs one.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx

from tests.support import ROOT, SERVER_ENV, free_port

__all__ = ["Workers", "running_workers"]


class Workers:
    """``count`` worker processes over ``config``; ``urls[i]`` is worker i's port, and with
    ``grpc`` ``grpc_ports[i]`` its gRPC port."""

    def __init__(self, config: Path, count: int, env: Mapping[int, Mapping[str, str]], *,
                 grpc: bool = False) -> None:
        # A short path: a Unix socket's path has at most 107 bytes.
        self.run_dir = Path(tempfile.mkdtemp(prefix="bs-run-"))
        self.config, self.count, self.env = config, count, env
        (self.run_dir / "metrics").mkdir()
        (self.run_dir / "workers").mkdir()
        (self.run_dir / "locks").mkdir()
        self.ports = [free_port() for _ in range(count)]
        self.urls = [f"http://127.0.0.1:{port}" for port in self.ports]
        self.grpc_ports = [free_port() for _ in range(count)] if grpc else []
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.logs: dict[int, Path] = {}

    def start(self, index: int) -> None:
        log = self.run_dir / f"worker-{index}.log"
        self.logs[index] = log
        with log.open("ab") as out:
            self.processes[index] = subprocess.Popen(
                [sys.executable, "-m", "tests.support.cluster", "--run-dir", str(self.run_dir),
                 "--index", str(index), "--count", str(self.count), "--config", str(self.config),
                 "--port", str(self.ports[index]),
                 *(["--grpc-port", str(self.grpc_ports[index])] if self.grpc_ports else [])],
                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, **SERVER_ENV, **self.env.get(index, {})})

    def wait_loaded(self, index: int, timeout_s: float = 60.0) -> None:
        """Until worker ``index`` answers and none of its models is still loading."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.processes[index].poll() is not None:
                raise RuntimeError(f"worker {index} exited: {self.output(index)}")
            with contextlib.suppress(httpx.HTTPError):
                models = httpx.get(f"{self.urls[index]}/models", timeout=5).json()["models"]
                socket = self.run_dir / "workers" / f"{index}.sock"
                if socket.exists() and all(m["state"] != "loading" for m in models):
                    return
            time.sleep(0.05)
        raise TimeoutError(f"worker {index} did not load its models: {self.output(index)}")

    def kill(self, index: int) -> None:
        self.processes[index].kill()
        self.processes[index].wait(30)

    def output(self, index: int) -> str:
        return self.logs[index].read_text(errors="replace")[-4000:]

    def close(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(30)
        shutil.rmtree(self.run_dir, ignore_errors=True)


@contextlib.contextmanager
def running_workers(config: Path, count: int = 2,
                    env: Mapping[int, Mapping[str, str]] | None = None) -> Iterator[Workers]:
    """``count`` workers, each with ``os.environ``, the tests' paths and ``env[i]``, loaded."""
    workers = Workers(config, count, env or {})
    try:
        for index in range(count):
            workers.start(index)
        for index in range(count):
            workers.wait_loaded(index)
        yield workers
    finally:
        workers.close()


def main() -> None:
    from batchserve.cluster.rundir import Cluster
    from batchserve.config import load_models
    from batchserve.settings import ServerSettings
    from batchserve.workers.worker import serve_worker

    parser = argparse.ArgumentParser()
    for flag in ("--run-dir", "--config"):
        parser.add_argument(flag, type=Path, required=True)
    for flag in ("--index", "--count", "--port"):
        parser.add_argument(flag, type=int, required=True)
    parser.add_argument("--grpc-port", type=int)
    args = parser.parse_args()
    settings = ServerSettings(config=args.config, port=args.port, grpc_port=args.grpc_port,
                              shutdown_grace_s=10)
    # A worker's own start (desired.json, the app, its port and its peer socket), on a port of its own.
    serve_worker(settings, load_models(settings.config), Cluster(args.run_dir, args.index, args.count))


if __name__ == "__main__":
    main()
