"""A ``batchserve serve`` process started for one measurement, and what it used.

Peak memory is the whole server's: the process's high-water mark of resident memory
(``VmHWM`` in ``/proc/PID/status``, exact, no sampling) and, with ``--workers N``, its
workers' too, summed (``proctree``: an upper bound of the peak of the sum), or psutil
samples where there is no ``/proc``. GPU memory is what ``nvidia-smi`` reports for those
processes (a CUDA context per worker included) when the model runs on a GPU; the allocator's
own peak (``torch.cuda.max_memory_allocated``) is only visible inside the server.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from batchserve_planning.confine import CpuQuota
from batchserve_planning.load.scrape import ServerError, wait_ready
from batchserve_planning.proctree import TreeMemory, status_kib, tree_peak_rss, tree_pids, tree_rss


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def toml_table(table: dict[str, Any], header: str = "[[models]]") -> str:
    """One ``[[models]]`` table (or another ``header``); ``options`` inline, as in models/models.toml."""
    return f"{header}\n" + "".join(f"{key} = {toml_value(value)}\n" for key, value in table.items())


def free_ports(port: int | None, grpc: bool) -> tuple[int, int | None]:
    """The HTTP port (``port``, else a free one) and, with ``grpc``, a free gRPC port other than it."""
    http = port or _free_port()
    return http, _free_port(taken=http) if grpc else None


def _free_port(taken: int | None = None) -> int:
    """A loopback port that was free a moment ago, other than ``taken`` (the kernel may hand out
    the port it has just handed out, once that socket is closed). The server could bind port 0
    itself, but then the launcher would have to learn the port from the server's log; the window
    between closing this socket and the server binding the port is a few milliseconds on a port
    the kernel has just handed out, and a lost race shows as a server that exits before it is ready."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port != taken:
            return port


class ManagedServer:
    """``python -m batchserve serve`` on a loopback port, optionally pinned to ``cpus``: the one
    launcher of the planner, the tests and the benchmarks.

    ``port``: a free one by default. ``log``: where its output goes (a temporary file, removed
    on ``stop``/``close``, by default); ``output()`` reads it. ``quota_cpus``: a CFS quota of
    that many CPUs for the server and its workers (``confine.CpuQuota``, ``quota`` while it runs;
    ``OSError`` where quotas are unsupported), released on ``stop``/``close``. ``env`` is added
    to this process's environment. ``stop()`` is SIGTERM and the drain; ``close()`` kills at once.
    """

    def __init__(self, config: Path, log: Path | None = None, *, port: int | None = None,
                 cpus: set[int] | None = None, grace_s: float = 5.0, log_level: str = "warning",
                 env: Mapping[str, str] | None = None, args: Sequence[str] = (),
                 quota_cpus: float | None = None, grpc: bool = False) -> None:
        """``args``: more ``serve`` flags; ``env``: more environment (``BATCHSERVE_*`` settings);
        ``grpc``: serve gRPC too, on a free port (``grpc_port``)."""
        self.port, self.grpc_port = free_ports(port, grpc)
        self.url = f"http://127.0.0.1:{self.port}"
        if self.grpc_port is not None:
            args = [*args, "--grpc-port", str(self.grpc_port)]
        self._own_log = log is None
        if log is None:
            handle, name = tempfile.mkstemp(prefix="batchserve-", suffix=".log")
            os.close(handle)
            log = Path(name)
        self.log_path = log
        self._log: IO[bytes] = log.open("ab")
        self._peak_samples: TreeMemory | None = None
        self._gpu_peak: int | None = None
        self.quota: CpuQuota | None = None
        self.process = subprocess.Popen(
            [sys.executable, "-m", "batchserve", "serve", "--config", str(config), "--port", str(self.port),
             "--log-level", log_level, "--shutdown-grace-s", f"{grace_s:g}", *args],
            stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        if cpus:
            # Pinned before the interpreter has started (tens of ms): every thread it creates
            # inherits the mask. (preexec_fn is unsafe when this process has threads.)
            os.sched_setaffinity(self.process.pid, cpus)
        if quota_cpus is not None:
            # Likewise before any worker starts: they inherit the group.
            try:
                self.quota = CpuQuota(quota_cpus, f"server-{self.process.pid}")
                self.quota.add(self.process.pid)
            except BaseException:
                self.close()
                raise

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        """Until ``/readyz`` answers 200; on failure the server is stopped and ``ServerError``
        says why, with the end of its log."""
        try:
            wait_ready(f"{self.url}/readyz", timeout_s, alive=lambda: self.process.poll() is None)
        except ServerError as exc:
            tail = self.log_tail(40)
            self.stop()
            raise ServerError(f"{exc}; its log ends:\n{tail}") from None
        except BaseException:  # interrupted (Ctrl-C, SIGTERM): the caller never gets the server
            self.close()
            raise

    def sample_memory(self) -> None:
        """Where there is no exact high-water mark, remember the largest reading so far (of the
        whole process tree); the GPU memory of the tree, likewise."""
        if status_kib(self.process.pid, "VmHWM") is None:
            now = tree_rss(self.process.pid)
            if now is not None and (self._peak_samples is None or now.bytes > self._peak_samples.bytes):
                self._peak_samples = now
        used = _gpu_bytes(tree_pids(self.process.pid))
        if used is not None:
            self._gpu_peak = max(self._gpu_peak or 0, used)

    def peak_memory(self) -> TreeMemory | None:
        """The server's peak resident memory, its workers' included (read it before ``stop``)."""
        return tree_peak_rss(self.process.pid) or self._peak_samples

    def peak_rss_bytes(self) -> int | None:
        peak = self.peak_memory()
        return None if peak is None else peak.bytes

    def gpu_bytes(self) -> int | None:
        return self._gpu_peak

    def terminate(self) -> None:
        """SIGTERM, without waiting: the server drains and exits (``process.wait()`` for it)."""
        self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM and wait for the drain (SIGKILL after ``timeout_s``); release the log."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        self._release()

    def close(self) -> None:
        """SIGKILL at once (nothing left to drain: a test's end); release the log."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)
        self._release()

    def output(self) -> str:
        """Everything the server wrote so far."""
        if not self._log.closed:
            self._log.flush()
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def _release(self) -> None:
        if self.quota is not None:
            self.quota.release()
        self._log.close()
        if self._own_log:
            self.log_path.unlink(missing_ok=True)


def process_gpu_bytes(pid: int) -> int | None:
    """GPU memory ``nvidia-smi`` shows for one process (its CUDA context included)."""
    return _gpu_bytes([pid])


def _gpu_bytes(pids: list[int]) -> int | None:
    """GPU memory ``nvidia-smi`` attributes to ``pids``, summed; None without a GPU or when
    none of them holds any."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                              "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    wanted = {str(pid) for pid in pids}
    used = [int(fields[1]) * 2**20 for fields in ([f.strip() for f in line.split(",")]
                                                 for line in out.splitlines())
            if len(fields) == 2 and fields[0] in wanted and fields[1].isdigit()]
    return sum(used) if used else None
