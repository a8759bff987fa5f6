"""The cores a server may use, and how many workers ``--workers auto`` runs on them.

A container's CPU limit is a cgroup quota, not a smaller CPU count: ``os.cpu_count()`` is the
host's, and so is the affinity mask unless a cpuset was given. So the cores are the fewer of
the affinity mask and the quota (cgroup v2 ``cpu.max``, or v1 ``cpu.cfs_quota_us`` /
``cpu.cfs_period_us``), a fractional quota rounded up (a 1.5-CPU limit can run two threads,
each half the time).

``auto``: each worker runs every model, and a model runs ``instances`` batches at once, each
on ``threads`` cores (``options.torch_threads`` or ``options.threads``, else 1). So one worker
keeps ``max(instances x threads)`` cores busy, and ``auto`` is the cores divided by that, at
least 1. A model on a GPU counts the same: every worker holds its own CUDA context and copy of
the weights on the device (see README, "Worker processes", for what that costs).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from batchserve.config import ModelConfig

WORKER_CORES_ENV = "BATCHSERVE_WORKER_CORES"
"""Set by the supervisor in each worker: the cores one worker's threads should use by default."""

CGROUP = Path("/sys/fs/cgroup")


def available_cores(cgroup: Path = CGROUP) -> int:
    """The cores this process may use: its affinity mask, capped by a cgroup CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup)
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def _cgroup_quota(cgroup: Path) -> float | None:
    """CPUs' worth of time the cgroup may use, or ``None`` without a limit."""
    try:  # cgroup v2: "max 100000" (no limit) or "150000 100000"
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        pass
    else:
        return int(quota) / int(period) if quota != "max" and int(period) > 0 else None
    try:  # cgroup v1
        quota_us = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def cores_per_batch(config: ModelConfig) -> int:
    """Threads one batch of ``config`` runs on: its configured thread option, else 1."""
    options = config.options
    threads = options.get("torch_threads") or options.get("threads") or 1
    return int(threads) if isinstance(threads, int) and threads > 0 else 1


def auto_workers(configs: Sequence[ModelConfig], cores: int) -> int:
    """``--workers auto``: the cores over what one worker keeps busy, at least 1."""
    busy = max((c.instances * cores_per_batch(c) for c in configs), default=1)
    return max(1, cores // busy)


def worker_cores() -> int | None:
    """In a worker process, the cores its threads should use by default (the server's cores
    shared between the workers); ``None`` in a single-process server."""
    value = os.environ.get(WORKER_CORES_ENV)
    return int(value) if value and value.isdigit() and int(value) > 0 else None
