"""Each worker's status, as a file in the run directory that every other worker can read:
how ``/readyz`` and ``/healthz`` on any worker answer for the whole server.

A worker rewrites ``workers/<i>.json`` every ``STATUS_INTERVAL_S`` from its event loop (write
to a temporary file, then ``os.replace``: a reader sees the old file or the new one, never
half of one). The time it was written is its heartbeat: a worker whose loop is stuck stops
writing, and one whose file is older than ``STUCK_S`` is reported stuck. A worker that is not
running (it died and is being restarted, or has not started yet) has no file, or one whose
pid is gone: it is not ready.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from batchserve.cluster.rundir import Cluster
from batchserve.state import AppState

log = logging.getLogger(__name__)

STATUS_INTERVAL_S = 0.5
"""How often a worker rewrites its status file."""
STUCK_S = 10.0
"""A running worker whose status is older than this is stuck: its event loop is not turning."""


def local_status(state: AppState) -> dict[str, Any]:
    """This worker's status, as written to its file."""
    registry = state.registry
    return {
        "pid": os.getpid(),
        "index": state.cluster.index if state.cluster else 0,
        "written": time.time(),
        "ready": state.is_ready(),
        "draining": state.draining,
        "models": {m.config.name: m.status() for m in registry},
        "broken": registry.broken(),
    }


def write_status(state: AppState) -> None:
    cluster = state.cluster
    assert cluster is not None
    path = cluster.status_path(cluster.index)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(json.dumps(local_status(state)))
    os.replace(temporary, path)


def write_status_quietly(state: AppState) -> None:
    """``write_status``, logging rather than raising when the run directory is gone (the
    supervisor is ending)."""
    try:
        write_status(state)
    except OSError as exc:
        log.debug("cannot write the worker status: %s", exc)


async def keep_writing_status(state: AppState) -> None:
    """Write this worker's status every ``STATUS_INTERVAL_S`` until cancelled; stop the worker
    (SIGTERM to itself) if its supervisor is gone, so no worker outlives its server."""
    parent = os.getppid()
    while True:
        write_status_quietly(state)
        if os.getppid() != parent:
            log.error("the supervisor (pid %d) is gone; stopping", parent)
            os.kill(os.getpid(), 15)
            return
        await asyncio.sleep(STATUS_INTERVAL_S)


@dataclass(frozen=True)
class WorkerView:
    """What one worker's status file says, as another worker reads it."""

    index: int
    status: dict[str, Any] | None
    """The file's content; ``None``: no file, or its process is gone."""
    age_s: float = 0.0

    @property
    def ready(self) -> bool:
        return self.status is not None and bool(self.status.get("ready")) and self.age_s < STUCK_S

    @property
    def stuck(self) -> bool:
        return self.status is not None and self.age_s >= STUCK_S

    def reason(self) -> str | None:
        if self.status is None:
            return "not running (starting, or being restarted)"
        if self.stuck:
            return f"stuck: no status for {self.age_s:.0f} s"
        if self.status.get("draining"):
            return "draining"
        if not self.status.get("ready"):
            waiting = {name: s for name, s in self.status.get("models", {}).items()
                       if s.get("state") != "ready" and s.get("state") != "unloaded"}
            return f"models not ready: {sorted(waiting)}"
        return None


def read_workers(cluster: Cluster, now: float | None = None) -> list[WorkerView]:
    """Every worker's status, this one's included (as last written)."""
    now = time.time() if now is None else now
    views = []
    for index in range(cluster.count):
        try:
            status: dict[str, Any] | None = json.loads(cluster.status_path(index).read_text())
        except (OSError, ValueError):
            status = None
        if status is not None and not _alive(int(status.get("pid", 0))):
            status = None
        age = now - float(status.get("written", 0)) if status is not None else 0.0
        views.append(WorkerView(index, status, age))
    return views


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
