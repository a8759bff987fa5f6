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
the weights on the device (see docs/workers.md for what that costs).

Every worker also holds every model, so ``auto`` is capped by memory too: the memory the
server may use (the cgroup limit, else the machine's) over an estimate of one worker's,
``WORKER_BASE_BYTES``, plus ``TORCH_BASE_BYTES`` when a model runs on torch, plus twice the
models' artifact bytes (weights as read, and as loaded). Measured here on the demo models
(1.1-1.2 GiB per warm worker, 182 MiB for diabetes alone), the estimate is 1.2 GiB and
200 MiB; it is a guard against an image run without limits on a large host, not a sizing:
``batchserve inspect`` measures a model's memory.
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


WORKER_BASE_BYTES = 200 * 2**20
"""An idle worker: the interpreter, the web stack, numpy and scikit-learn."""
TORCH_BASE_BYTES = 600 * 2**20
"""What importing torch and the transformers libraries adds to a worker."""
TORCH_BACKENDS = ("resnet50", "transformer", "embedding")
MEMORY_SHARE = 0.8
"""Of the memory the server may use, what its workers' estimates may add up to."""


def auto_workers(configs: Sequence[ModelConfig], cores: int, memory_bytes: int | None = None) -> int:
    """``--workers auto``: the cores over what one worker keeps busy, capped by the workers'
    estimated memory within ``memory_bytes`` (when given), at least 1."""
    busy = max((c.instances * cores_per_batch(c) for c in configs), default=1)
    count = max(1, cores // busy)
    if memory_bytes is not None:
        count = min(count, max(1, int(MEMORY_SHARE * memory_bytes // worker_memory_estimate(configs))))
    return count


def worker_memory_estimate(configs: Sequence[ModelConfig]) -> int:
    """One worker's memory, estimated from its backends and its models' artifact sizes."""
    torch = any(c.backend in TORCH_BACKENDS for c in configs)
    artifacts = sum(_size(c.path) for c in configs)
    return WORKER_BASE_BYTES + (TORCH_BASE_BYTES if torch else 0) + 2 * artifacts


def _size(path: Path) -> int:
    try:
        if path.is_dir():
            return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        return path.stat().st_size
    except OSError:
        return 0


def available_memory(cgroup: Path = CGROUP, meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """The memory this server may use: its cgroup's limit (v2 ``memory.max``, v1
    ``memory.limit_in_bytes``), else the machine's total; ``None`` where neither is known."""
    for limit_file in (cgroup / "memory.max", cgroup / "memory" / "memory.limit_in_bytes"):
        try:
            text = limit_file.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:  # v1 writes a huge number for "no limit"
            return int(text)
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def worker_cores() -> int | None:
    """In a worker process, the cores its threads should use by default (the server's cores
    shared between the workers); ``None`` in a single-process server."""
    value = os.environ.get(WORKER_CORES_ENV)
    return int(value) if value and value.isdigit() and int(value) > 0 else None
