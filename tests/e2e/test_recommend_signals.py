"""SIGTERM to a running `batchserve recommend` stops the candidate server it started."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from tests.support import write_models

pytestmark = pytest.mark.timeout(180)


def _serving_children(process: psutil.Process) -> list[psutil.Process]:
    """The `batchserve serve` processes under ``process`` (its candidate servers)."""
    found = []
    for child in process.children(recursive=True):
        try:
            if "serve" in child.cmdline():
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


def _ready(server: psutil.Process) -> bool:
    """Whether the candidate server answers /readyz (its port from its command line)."""
    command = server.cmdline()
    port = command[command.index("--port") + 1]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("sigint", ["default", "ignored"])
@pytest.mark.parametrize("when", ["starting", "measuring"])
def test_sigterm_stops_the_candidate_server(tmp_path: Path, diabetes_path: Path,
                                            diabetes: tuple[np.ndarray, Any], when: str, sigint: str) -> None:
    """While the candidate server starts (recommend waits for its readiness) and while it is
    being measured (the ramp's first step), SIGTERM ends recommend and its server; also where
    recommend was started with SIGINT ignored, as a non-interactive shell starts a background job."""
    config = write_models(tmp_path / "models.toml", [
        {"name": "diabetes", "backend": "sklearn", "path": str(diabetes_path), "max_batch_size": 8}])
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps(diabetes[0][:20].tolist()))
    recommend = subprocess.Popen(
        [sys.executable, "-m", "batchserve", "recommend", "--config", str(config), "--model", "diabetes",
         "--inputs", str(rows), "--slo-p99-ms", "1000", "--out", str(tmp_path / "out"), "--no-progress",
         # Long steps: the run is still measuring its first candidate when the signal comes.
         "--step-s", "30", "--max-step-s", "60", "--max-wait-ms", "0", "--instances", "1", "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy(),
        preexec_fn=_ignore_sigint if sigint == "ignored" else None)
    parent = psutil.Process(recommend.pid)
    servers: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 120
        while not servers and time.monotonic() < deadline and recommend.poll() is None:
            time.sleep(0.2)
            servers = _serving_children(parent)
        assert servers, "recommend started no candidate server"
        if when == "measuring":
            while not _ready(servers[0]) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert _ready(servers[0]), "the candidate server never became ready"
            time.sleep(1.0)  # into the first step, 30 s long
        assert recommend.poll() is None
        recommend.send_signal(signal.SIGTERM)
        code = recommend.wait(timeout=60)
        _, alive = psutil.wait_procs(servers, timeout=30)
        assert not alive, f"candidate servers left running after SIGTERM: {[p.pid for p in alive]}"
        assert code == 128 + signal.SIGTERM
    finally:
        for process in [*servers, parent]:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        recommend.wait(timeout=30)
