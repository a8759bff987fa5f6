"""Other work on the machine, as recommend's contention probe sees it: processes spinning on the
CPUs outside the test's process tree (each started by a launcher that exits, so nobody here is
its parent)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

SPIN = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass\n"


@contextlib.contextmanager
def spinning(count: int, seconds: float = 120.0) -> Iterator[list[int]]:
    """``count`` processes spinning for at most ``seconds``, outside this tree; their pids. Killed
    on the way out, also where the test failed."""
    pids: list[int] = []
    try:
        for _ in range(count):
            launcher = subprocess.run(
                [sys.executable, "-c", "import subprocess, sys; print(subprocess.Popen([sys.executable, "
                 f"'-c', {SPIN.format(seconds=seconds)!r}], stdout=subprocess.DEVNULL, "
                 "stderr=subprocess.DEVNULL).pid)"],
                capture_output=True, text=True, check=True, timeout=30)
            pids.append(int(launcher.stdout))
        yield pids
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
