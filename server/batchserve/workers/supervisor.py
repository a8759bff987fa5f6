"""The supervisor of ``batchserve serve --workers N``: N worker processes behind one port.

It owns the ports (the HTTP port, the management and gRPC ports when set; each held by a socket
bound with ``SO_REUSEPORT``, never listening, which every worker's listener binds too, so that
the kernel spreads connections over them), the run directory the workers share
(``cluster/rundir.py``), and the workers' lives:

- a worker that dies is restarted, after a backoff that doubles with each death of that worker
  in the last ``CRASH_WINDOW_S`` (from ``FIRST_BACKOFF_S`` up to ``MAX_BACKOFF_S``); a worker
  that dies ``CRASH_LOOP`` times within the window is a crash loop: the supervisor stops every
  worker and exits 1, saying which worker and how it ended;
- a dead worker's metrics are folded into the archive (``metrics_multiprocess.retire_worker``):
  its counters still count, its live gauges are gone;
- SIGTERM (or SIGINT) is forwarded to every worker, and each drains within the one grace
  (``shutdown_grace_s``, from the signal); the supervisor waits that long, plus the workers' own
  backstop, then kills what is left. It exits 0 when every worker exited 0.

granian has a multiprocess supervisor of its own; it binds the sockets and imports the app in
its workers by name, where a batchserve worker runs up to three servers (the port, the management
port, its peer socket) on one loop with one drain, and the restart backoff, crash-loop limit and
metrics archive above are batchserve's: so this one is written here.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from batchserve.cluster.cores import WORKER_CORES_ENV
from batchserve.cluster.rundir import RUN_DIR_ENV, Cluster, run_dir_parent
from batchserve.serving import reserve_port
from batchserve.settings import ServerSettings

log = logging.getLogger(__name__)

FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 10.0
CRASH_WINDOW_S = 60.0
CRASH_LOOP = 5
"""Deaths of one worker within ``CRASH_WINDOW_S`` that end the server."""
BACKSTOP_S = 10.0
"""How long past the grace the supervisor waits for workers (their own backstop is 5 s)."""
POLL_S = 0.05


@dataclass
class Worker:
    index: int
    process: subprocess.Popen[bytes] | None = None
    deaths: list[float] = field(default_factory=list)
    """When it died, within the crash window."""
    restart_at: float | None = None


class Supervisor:
    def __init__(self, settings: ServerSettings, count: int, cores: int) -> None:
        self.settings = settings
        self.count = count
        self.cores = cores
        self.workers = [Worker(i) for i in range(count)]
        self.stopping: float | None = None
        """When the drain began (``time.monotonic()``), once a signal came."""
        self.exit_code = 0

    def run(self) -> int:
        run_dir = Path(tempfile.mkdtemp(prefix="batchserve-run-", dir=run_dir_parent()))
        try:
            return self._run(Cluster(run_dir, 0, self.count))
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)

    def _run(self, cluster: Cluster) -> int:
        cluster.create_dirs()
        sockets = self._sockets()
        settings = self.settings.model_copy(update={
            "port": sockets["main"].getsockname()[1], "workers": self.count,
            **{f"{name}_port": sockets[name].getsockname()[1] for name in ("management", "grpc")
               if name in sockets}})
        _write_private(cluster.settings_path, _settings_json(settings))
        log.info("batchserve: %d workers on %s:%d (%d cores)", self.count,
                 settings.host, settings.port, self.cores)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for worker in self.workers:
                self._start(cluster, worker, sockets)
            while not self._done(cluster, sockets):
                time.sleep(POLL_S)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for worker in self.workers:
                if worker.process is not None and worker.process.poll() is None:
                    worker.process.kill()
                    worker.process.wait()
            for sock in sockets.values():
                sock.close()
        return self.exit_code

    def _sockets(self) -> dict[str, socket.socket]:
        """The port (and the management and gRPC ports), bound but not listening: holding the port (0
        resolved) while the workers bind it (``serving.reserve_port``)."""
        ports = {"main": self.settings.port}
        if self.settings.management_port is not None:
            ports["management"] = self.settings.management_port
        if self.settings.grpc_port is not None:
            ports["grpc"] = self.settings.grpc_port
        return {name: reserve_port(self.settings.host, port) for name, port in ports.items()}

    def _start(self, cluster: Cluster, worker: Worker, sockets: dict[str, socket.socket]) -> None:
        command = [sys.executable, "-m", "batchserve.workers.worker", "--run-dir", str(cluster.run_dir),
                   "--index", str(worker.index), "--count", str(self.count)]
        env = {**os.environ, RUN_DIR_ENV: str(cluster.run_dir),
               "PROMETHEUS_MULTIPROC_DIR": str(cluster.metrics_dir),
               WORKER_CORES_ENV: str(max(1, self.cores // self.count))}
        worker.process = subprocess.Popen(command, env=env)
        worker.restart_at = None

    def _done(self, cluster: Cluster, sockets: dict[str, socket.socket]) -> bool:
        """One turn of the watch: reap, restart, or end; ``True`` when the server is over."""
        now = time.monotonic()
        for worker in self.workers:
            process = worker.process
            if process is not None and process.poll() is not None:
                self._reap(cluster, worker, process, now)
            due = worker.restart_at is not None and now >= worker.restart_at
            if worker.process is None and self.stopping is None and due:
                log.info("restarting worker %d", worker.index)
                self._start(cluster, worker, sockets)
        running = [w for w in self.workers if w.process is not None]
        if self.stopping is not None:
            if not running:
                return True
            if now > self.stopping + self.settings.shutdown_grace_s + BACKSTOP_S:
                log.error("workers %s overstayed the shutdown grace; killing them",
                          [w.index for w in running])
                self.exit_code = 1
                return True
        return False

    def _reap(self, cluster: Cluster, worker: Worker, process: subprocess.Popen[bytes], now: float) -> None:
        from batchserve.metrics_multiprocess import retire_worker

        worker.process = None
        code = process.returncode
        cluster.status_path(worker.index).unlink(missing_ok=True)
        retire_worker(cluster.metrics_dir, process.pid)
        if self.stopping is not None:  # draining: an exit is expected
            if code != 0:
                log.error("worker %d exited with %s while draining", worker.index, _how(code))
                self.exit_code = 1
            return
        worker.deaths = [t for t in worker.deaths if now - t < CRASH_WINDOW_S] + [now]
        if len(worker.deaths) >= CRASH_LOOP:
            log.error("worker %d died %d times in %.0f s (last: %s): a crash loop; stopping the server",
                      worker.index, len(worker.deaths), CRASH_WINDOW_S, _how(code))
            self.exit_code = 1
            self._begin_stop()
            return
        backoff = min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** (len(worker.deaths) - 1))
        log.error("worker %d (pid %d) %s; restarting it in %.1f s", worker.index, process.pid,
                  _how(code), backoff)
        worker.restart_at = now + backoff

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        if self.stopping is not None and sig == signal.SIGINT:  # a second Ctrl+C
            for worker in self.workers:
                if worker.process is not None:
                    worker.process.send_signal(signal.SIGINT)
            return
        self._begin_stop()

    def _begin_stop(self) -> None:
        if self.stopping is None:
            self.stopping = time.monotonic()
        for worker in self.workers:
            if worker.process is not None and worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)


def _how(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _settings_json(settings: ServerSettings) -> str:
    data = settings.model_dump(mode="json")
    token = settings.management_token
    data["management_token"] = token.get_secret_value() if token is not None else None
    return json.dumps(data)


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, readable by this user only (it may hold the token)."""
    handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(handle, "w") as out:
        out.write(text)
