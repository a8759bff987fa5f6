"""A ``batchserve serve`` process started for one measurement, and what it used.

Peak memory is the process's high-water mark of resident memory (``VmHWM`` in
``/proc/PID/status``, exact, no sampling), or psutil samples where there is no
``/proc``. GPU memory is what ``nvidia-smi`` reports for the process (CUDA context
included) when the model runs on a GPU; the allocator's own peak
(``torch.cuda.max_memory_allocated``) is only visible inside the server.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

from batchserve_planning.load.scrape import ServerError, wait_ready


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ManagedServer:
    """``python -m batchserve serve`` on a free loopback port, optionally pinned to ``cpus``."""

    def __init__(self, config: Path, log: Path, *, cpus: set[int] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        self._log: IO[bytes] = log.open("wb")
        self._peak_samples = 0
        self._gpu_peak: int | None = None
        self.process = subprocess.Popen(
            [sys.executable, "-m", "batchserve", "serve", "--config", str(config), "--port", str(self.port),
             "--log-level", "warning", "--shutdown-grace-s", "5"],
            stdout=self._log, stderr=subprocess.STDOUT)
        if cpus:
            # Pinned before the interpreter has started (tens of ms): every thread it creates
            # inherits the mask. (preexec_fn is unsafe when this process has threads.)
            os.sched_setaffinity(self.process.pid, cpus)

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        try:
            wait_ready(self.url, timeout_s, alive=lambda: self.process.poll() is None)
        except ServerError as exc:
            self.stop()
            raise ServerError(f"{exc}; its log ends:\n{self.log_tail()}") from None

    def sample_memory(self) -> None:
        """Where there is no exact high-water mark, remember the largest reading so far."""
        if _status_kib(self.process.pid, "VmHWM") is None:
            try:
                import psutil

                rss = int(psutil.Process(self.process.pid).memory_info().rss)
                self._peak_samples = max(self._peak_samples, rss)
            except (ImportError, OSError):
                pass
        used = _gpu_bytes(self.process.pid)
        if used is not None:
            self._gpu_peak = max(self._gpu_peak or 0, used)

    def peak_rss_bytes(self) -> int | None:
        peak = _status_kib(self.process.pid, "VmHWM")
        if peak is not None:
            return peak * 1024
        return self._peak_samples or None

    def gpu_bytes(self) -> int | None:
        return self._gpu_peak

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        self._log.close()

    def log_tail(self, lines: int = 15) -> str:
        if not self._log.closed:
            self._log.flush()
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


def _status_kib(pid: int, field: str) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else None


def _gpu_bytes(pid: int) -> int | None:
    """GPU memory ``nvidia-smi`` attributes to ``pid``; None without a GPU."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                              "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) == 2 and fields[0] == str(pid) and fields[1].isdigit():
            return int(fields[1]) * 2**20
    return None
