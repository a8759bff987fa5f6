"""What one worker process knows of the server it is part of: its index, how many workers
there are, and the run directory they share with their supervisor.

The run directory (created by the supervisor, mode 0700, removed when it exits)::

    settings.json          the server's settings, for every worker (0600: it holds the token)
    metrics/               prometheus-client's multiprocess directory (PROMETHEUS_MULTIPROC_DIR)
    workers/<i>.json       worker i's status, rewritten by it every STATUS_INTERVAL_S (status.py)
    workers/<i>.sock       worker i's peer API (a Unix socket: management fanned out to it)
    desired.json           management changes a (re)started worker applies before it loads
    locks/<name>.lock      flock(2) held while a management change to ``name`` fans out

It lives in a memory filesystem when the machine has one to spare (``run_dir_parent``): every
worker rewrites its status file twice a second and its metrics live in mmap'd files there, and on
a disk filesystem each rewrite is journalled (measured: 168 us of CPU for the create and rename
on ext4, 31 us on tmpfs, the event loop held that long).

In a single-process server (``--workers 1``) there is no cluster: ``AppState.cluster`` is
``None`` and every feature works on the one process alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

RUN_DIR_ENV = "BATCHSERVE_RUN_DIR"
"""The run directory, set by the supervisor in each worker's environment."""
MEMORY_FS = Path("/dev/shm")
MEMORY_FS_MIN_FREE = 16 << 20
"""Free bytes a memory filesystem needs to hold the run directory: its files are small (the
metrics files are 1 MiB each but sparse: a few pages are written), and Docker's default
``/dev/shm`` is 64 MiB."""


def run_dir_parent(candidate: Path = MEMORY_FS, min_free: int = MEMORY_FS_MIN_FREE) -> str | None:
    """Where the supervisor creates the run directory: ``candidate`` (a memory filesystem) when it
    is a folder this process may create in with ``min_free`` bytes free, else ``None`` (the
    system's temporary folder). ``TMPDIR`` set in the environment is a choice: it wins."""
    if os.environ.get("TMPDIR"):
        return None
    try:
        usage = os.statvfs(candidate)
    except OSError:
        return None
    if not candidate.is_dir() or not os.access(candidate, os.W_OK | os.X_OK):
        return None
    return str(candidate) if usage.f_bavail * usage.f_frsize >= min_free else None


@dataclass(frozen=True)
class Cluster:
    run_dir: Path
    index: int
    """This worker's index, 0 .. count - 1 (a restarted worker keeps its index)."""
    count: int

    @property
    def settings_path(self) -> Path:
        return self.run_dir / "settings.json"

    @property
    def metrics_dir(self) -> Path:
        return self.run_dir / "metrics"

    @property
    def desired_path(self) -> Path:
        return self.run_dir / "desired.json"

    def status_path(self, index: int) -> Path:
        return self.run_dir / "workers" / f"{index}.json"

    def socket_path(self, index: int) -> Path:
        return self.run_dir / "workers" / f"{index}.sock"

    def lock_path(self, name: str) -> Path:
        """The lock file of a model name (names are checked by the config: no path separators)."""
        return self.run_dir / "locks" / f"{name}.lock"

    @property
    def others(self) -> list[int]:
        """The other workers' indices."""
        return [i for i in range(self.count) if i != self.index]

    def create_dirs(self) -> None:
        """The supervisor's part: the folders of the layout (the run directory exists)."""
        for sub in ("metrics", "workers", "locks"):
            (self.run_dir / sub).mkdir(mode=0o700, exist_ok=True)
