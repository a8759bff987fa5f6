"""SIGTERM against a real server: one grace for the whole drain, and a grace of 0 is no wait."""

from __future__ import annotations

import contextlib
import re
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.support import ServerProcess, write_models

pytestmark = pytest.mark.slow

BATCH_S = 120.0
"""How long the model takes on a batch: far past any grace here."""
MARGIN_S = 20.0
"""What the exit may take past the grace on a loaded machine (the bound is on a 2 min batch)."""


def dispatched(url: str, model: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    found = re.search(rf'^batchserve_batch_size_count{{model="{model}"}} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


@pytest.mark.parametrize("grace_s", [0.0, 3.0])
def test_sigterm_with_a_batch_longer_than_the_grace_exits_0_within_it(tmp_path: Path,
                                                                     grace_s: float) -> None:
    # Before: uvicorn's grace, then the batchers' again, then the exit waited for the batch's
    # thread (2 min); a grace of 0 meant uvicorn waited forever for the request.
    config = write_models(tmp_path / "models.toml", [{
        "name": "slow", "backend": "echo", "path": "x", "timeout_ms": 600_000,
        "options": {"delay_ms": BATCH_S * 1000, "slow_on": 1}}])
    server = ServerProcess(config, grace_s=grace_s)
    try:
        server.wait_ready()
        request = threading.Thread(target=lambda: _post_ignoring_errors(server.url), daemon=True)
        request.start()
        give_up = time.monotonic() + 60
        while dispatched(server.url, "slow") < 1 and time.monotonic() < give_up:
            time.sleep(0.05)
        assert dispatched(server.url, "slow") >= 1, "the slow batch never started"
        signalled = time.monotonic()
        server.terminate()
        code = server.process.wait(timeout=BATCH_S + 60)
        took = time.monotonic() - signalled
        assert code == 0, server.output()
        assert took < grace_s + MARGIN_S, (took, server.output())
    finally:
        server.close()


def _post_ignoring_errors(url: str) -> None:
    # Dropped at the end of the grace: the connection closes without an answer.
    with contextlib.suppress(httpx.TransportError):
        httpx.post(f"{url}/predict", json={"model": "slow", "inputs": [1]}, timeout=BATCH_S + 60)
