"""How much of this machine other work took while a measurement ran.

A probe reads, at the start and end of a run, the machine's CPU times (``steal``: time a virtual
machine's CPUs waited for the hypervisor) and the CPU time of every process outside this one's
tree (this process, the load generator's processes and every server it started are inside; the
rest is other work). Their differences over the wall time and the CPUs give two shares of the
machine's CPU capacity. Processes that ended during the run are missed, and one that started in
it is counted whole (its CPU time before the run was nil); the share is capped at what the
machine was busy (its non-idle CPU time) over the run: an estimate, good to a few percent, and
enough to say that a run shared its CPUs.

A run whose other work took more than ``BUSY_SHARE`` of the CPUs, or whose steal exceeded
``STEAL_SHARE``, is contended: its figures may be low, and the report says which runs were.

Before a sweep starts its first server, ``busy_cores`` reads how many of the servers' cores other
work keeps busy (nothing of recommend's runs then), and ``cores_left`` what it leaves them: a
torch model's threads are set to those (``sweep.threads_per_instance``). Torch's threads share
each operator's work and wait for each other at its end; where another process holds a core,
each operator waits for the thread on it. On the 2-core VM beside one spinning process per core,
resnet50 (batch 1, one worker, 8 clients) measured 6.6 and 6.0 inferences/s on two servers in
turn with torch's own 2 threads, run-to-run spread 15% (per round, the two 1.01-1.72x apart), and
6.7 and 6.5/s with 1 thread, spread 2.5-3.5% (1.02-1.10x apart; ``benchmarks/speed_drift.py``,
benchmarks/README.md): the same throughput, a figure that can be known.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

BUSY_SHARE = 0.15
"""Other processes' CPU, as a share of all the machine's CPUs, over which a run is contended."""
STEAL_SHARE = 0.05


@dataclass(frozen=True)
class Contention:
    others_cpu: float
    """CPU time of processes outside this tree, over the run's wall time x the machine's CPUs."""
    steal: float
    """Steal time over all CPU time of the run (0 where the kernel reports none)."""

    @property
    def contended(self) -> bool:
        return self.others_cpu > BUSY_SHARE or self.steal > STEAL_SHARE

    def describe(self) -> str:
        return f"other processes {self.others_cpu:.0%} of the CPUs, steal {self.steal:.0%}"


def busy_cores(cpus: set[int] | None = None, seconds: float = 2.0) -> float:
    """How many of ``cpus`` (default: this process's affinity) were busy over the next ``seconds``:
    each one's non-idle share of its time (steal included), summed. Read while nothing of this
    process's runs, it is other work's."""
    import psutil

    chosen = sorted(cpus if cpus else os.sched_getaffinity(0))
    before = psutil.cpu_times(percpu=True)
    time.sleep(seconds)
    after = psutil.cpu_times(percpu=True)
    busy = 0.0
    for cpu in chosen:
        if cpu >= min(len(before), len(after)):
            continue
        busy += _busy_share(sum(after[cpu]) - sum(before[cpu]), _idle(after[cpu]) - _idle(before[cpu]))
    return busy


def cores_left(cores: int, busy: float) -> int | None:
    """The cores other work leaves of ``cores`` where it keeps more than ``BUSY_SHARE`` of them
    busy (``busy`` cores' worth, ``busy_cores``): the rest, rounded, at least 1; None where it
    keeps fewer busy, or leaves them all."""
    if busy <= BUSY_SHARE * cores:
        return None
    left = max(1, round(cores - busy))
    return left if left < cores else None


def worst(readings: list[Contention]) -> Contention | None:
    """The most contended of several runs' readings (one figure measured in several runs)."""
    if not readings:
        return None
    return Contention(max(r.others_cpu for r in readings), max(r.steal for r in readings))


class Probe:
    """``start()`` before a run, ``stop()`` after it: the run's ``Contention``."""

    def __init__(self) -> None:
        self._wall = 0.0
        self._others: dict[int, float] = {}
        self._cpu: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def start(self) -> None:
        self._wall, self._others = _scan()
        self._cpu = _cpu_times()

    def stop(self) -> Contention:
        now, others = _scan()
        wall = now - self._wall
        total, steal, idle = _cpu_times()
        used = sum(max(0.0, seconds - self._others.get(pid, 0.0)) for pid, seconds in others.items())
        cpus = os.cpu_count() or 1
        total_d, steal_d, idle_d = total - self._cpu[0], steal - self._cpu[1], idle - self._cpu[2]
        share = used / (wall * cpus) if wall > 0 else 0.0
        # Never more than the machine was busy: the scans read processes one by one, so a short
        # run's window can hold more CPU time than its wall time says.
        busy = _busy_share(total_d, idle_d)
        return Contention(others_cpu=min(share, busy), steal=steal_d / total_d if total_d > 0 else 0.0)


def _scan() -> tuple[float, dict[int, float]]:
    """Others' CPU seconds, and the moment they were read: the middle of the scan (reading every
    process takes tens of ms on a busy machine, a share of a short run)."""
    before = time.monotonic()
    seconds = others_cpu_s()
    return (before + time.monotonic()) / 2, seconds


def _cpu_times() -> tuple[float, float, float]:
    """All CPU time of the machine, its steal time and its idle time (iowait included), in seconds."""
    import psutil

    times = psutil.cpu_times()
    return sum(times), float(getattr(times, "steal", 0.0)), _idle(times)


def _busy_share(total_s: float, idle_s: float) -> float:
    """The non-idle share of ``total_s`` CPU seconds, within 0 and 1 (the counters' rounding)."""
    return min(1.0, max(0.0, (total_s - idle_s) / total_s)) if total_s > 0 else 0.0


def _idle(times: Any) -> float:
    """Idle seconds of a ``psutil.cpu_times`` reading, iowait included."""
    return float(times.idle + getattr(times, "iowait", 0.0))


def others_cpu_s() -> dict[int, float]:
    """CPU seconds (user + system) by pid of every process outside this one's tree."""
    import psutil

    me = psutil.Process()
    ours = {me.pid, *(child.pid for child in me.children(recursive=True))}
    seconds = {}
    for process in psutil.process_iter(["cpu_times"]):
        times = process.info["cpu_times"]
        if process.pid in ours or times is None:  # None: gone, or not ours to read
            continue
        seconds[process.pid] = times.user + times.system
    return seconds


def summary(measured: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Over every measurement of a run (a label and a step's dict with ``others_cpu`` and
    ``steal``): how many were contended, which, and the most other work took."""
    read = [(label, step) for label, step in measured if step.get("others_cpu") is not None]
    shares = [(label, float(step["others_cpu"]), float(step.get("steal") or 0.0)) for label, step in read]
    contended = [f"{label} ({Contention(others, steal).describe()})" for label, others, steal in shares
                 if Contention(others, steal).contended]
    return {"measurements": len(shares), "contended": contended,
            "max_others_cpu": max((s for _, s, _ in shares), default=None),
            "mean_others_cpu": sum(s for _, s, _ in shares) / len(shares) if shares else None,
            "max_steal": max((s for _, _, s in shares), default=None),
            "busy_share": BUSY_SHARE, "steal_share": STEAL_SHARE}
