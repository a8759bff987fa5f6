"""A CFS CPU quota for a process tree: a cgroup of its own, removed on ``release()``.

Affinity (``sched_setaffinity``) says which cores a server may run on; a quota says how much
CPU time it gets on them: ``cpus = 0.5`` is 50 ms of every 100 ms period, whichever cores.
That is how a fractional vCPU is measured on a whole-core machine.

Two kernels' interfaces, whichever this machine mounts:

- cgroup v1: the ``cpu`` hierarchy (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``); the CPU time
  used is ``cpuacct.usage``, in the same folder where the two controllers are mounted together,
  else in a twin group made in the ``cpuacct`` hierarchy;
- cgroup v2: ``cpu.max`` (and ``usage_usec`` in ``cpu.stat``), which needs the ``cpu``
  controller listed in the parent's ``cgroup.subtree_control``.

Groups are made under the cgroup this process is in (its quota, if any, still applies above
ours). Processes join by pid (``add``, right after they start: their children inherit it);
``release`` moves whatever is left back to the parent and removes the group.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

PERIOD_US = 100_000
"""The CFS period: the quota is this many microseconds times ``cpus``."""
MIN_QUOTA_US = 1_000
"""The kernel refuses a smaller quota."""
_COUNTER = itertools.count()


@dataclass(frozen=True)
class _Places:
    version: Literal[1, 2]
    cpu: Path
    """The folder the quota group is made in."""
    usage: Path | None
    """v1 only: the folder of the ``cpuacct`` twin group (None: ``cpu``'s folder has cpuacct)."""


def _mountinfo() -> list[tuple[str, Path, str, set[str]]]:
    """(root within the file system, mount point, type, super options) of each mount."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields, _, rest = line.partition(" - ")
        parts, tail = fields.split(), rest.split()
        if len(parts) < 5 or len(tail) < 3:
            continue
        found.append((_unescape(parts[3]), Path(_unescape(parts[4])), tail[0], set(tail[2].split(","))))
    return found


def _unescape(text: str) -> str:
    """mountinfo writes a space in a path as ``\\040`` (octal escapes)."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match[1], 8)), text)


def _own_cgroups() -> dict[str, str]:
    """This process's cgroup path by v1 controller (``"cpu"``, ...), and by ``""`` for v2."""
    owned: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            owned[controller] = path
    return owned


def _inside(mount_root: str, point: Path, path: str) -> Path:
    """The folder of cgroup ``path`` in a hierarchy mounted at ``point`` from ``mount_root``."""
    relative = os.path.relpath(path, mount_root)
    return point if relative.startswith("..") or relative == "." else point / relative


def _locate() -> _Places | str:
    """Where quota groups go here, or why they can't."""
    try:
        mounts, owned = _mountinfo(), _own_cgroups()
    except OSError as exc:
        return f"cannot read this process's cgroups: {exc}"
    v1 = {option: (root, point) for root, point, kind, options in mounts if kind == "cgroup"
          for option in options if option in ("cpu", "cpuacct")}
    if "cpu" in v1:
        cpu = _inside(*v1["cpu"], owned.get("cpu", "/"))
        usage = None
        if "cpuacct" in v1 and v1["cpuacct"] != v1["cpu"]:
            usage = _inside(*v1["cpuacct"], owned.get("cpuacct", "/"))
        return _Places(1, cpu, usage)
    unified = [(root, point) for root, point, kind, _ in mounts if kind == "cgroup2"]
    if not unified:
        return "no cgroup file system with a cpu controller is mounted"
    root, point = unified[0]
    candidates = [_inside(root, point, owned.get("", "/")), point]
    for parent in candidates:
        try:
            enabled = (parent / "cgroup.subtree_control").read_text().split()
        except OSError:
            continue
        if "cpu" in enabled:
            return _Places(2, parent, None)
    return (f"cgroup v2 at {point}: the cpu controller is not enabled in "
            f"{candidates[0]}/cgroup.subtree_control (a quota group needs it in its parent)")


def quota_support() -> str | None:
    """None when CPU quotas work here (a probe group is made and removed), else why not."""
    places = _locate()
    if isinstance(places, str):
        return places
    try:
        CpuQuota(1.0, "probe").release()
    except OSError as exc:
        return f"cannot make a CPU quota group in {places.cpu}: {exc}"
    return None


class CpuQuota:
    """A cgroup of its own limited to ``cpus`` CPUs' worth of time per period.

    ``path``: the group's folder (the cpu controller's); ``version``: 1 or 2. Raises ``OSError``
    where quotas are unsupported (``quota_support()`` says why).
    """

    def __init__(self, cpus: float, name: str) -> None:
        if not cpus > 0:
            raise ValueError(f"a CPU quota must be > 0 CPUs, not {cpus}")
        places = _locate()
        if isinstance(places, str):
            raise OSError(places)
        self.cpus = cpus
        self.version = places.version
        self.quota_us = max(MIN_QUOTA_US, round(cpus * PERIOD_US))
        group = f"batchserve-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}-{os.getpid()}-{next(_COUNTER)}"
        self.path = places.cpu / group
        self._groups = [self.path] + ([places.usage / group] if places.usage is not None else [])
        self._final_usage_s: float | None = None
        self._released = False
        made: list[Path] = []
        try:
            for folder in self._groups:
                folder.mkdir()
                made.append(folder)
            if self.version == 1:
                _write(self.path / "cpu.cfs_period_us", str(PERIOD_US))
                _write(self.path / "cpu.cfs_quota_us", str(self.quota_us))
            else:
                _write(self.path / "cpu.max", f"{self.quota_us} {PERIOD_US}")
        except OSError:
            for folder in reversed(made):
                folder.rmdir()
            raise

    def add(self, pid: int) -> None:
        """Move process ``pid`` (all its threads) into the group; what it starts later is in it too."""
        for folder in self._groups:
            _write(folder / "cgroup.procs", str(pid))

    def pids(self) -> list[int]:
        return _pids(self.path)

    def usage_s(self) -> float:
        """CPU seconds used in the group so far (the last reading, after ``release``); NaN on
        cgroup v1 without a cpuacct controller."""
        if self._final_usage_s is not None:
            return self._final_usage_s
        if self.version == 2:
            stat = dict(line.split() for line in (self.path / "cpu.stat").read_text().splitlines())
            return int(stat["usage_usec"]) / 1e6
        usage = self._groups[-1] / "cpuacct.usage"
        return int(usage.read_text()) / 1e9 if usage.exists() else float("nan")

    def release(self) -> None:
        """Move the processes still in the group back to the parent and remove the group
        (a second call does nothing). Raises ``OSError`` if the group stays busy."""
        if self._released:
            return
        self._final_usage_s = self.usage_s()
        for folder in self._groups:
            _remove(folder)
        self._released = True


def _write(path: Path, text: str) -> None:
    """One ``write(2)`` of ``text``: a cgroup file takes a value per write."""
    descriptor = os.open(path, os.O_WRONLY)
    try:
        os.write(descriptor, text.encode() + b"\n")
    finally:
        os.close(descriptor)


def _pids(folder: Path) -> list[int]:
    return [int(line) for line in (folder / "cgroup.procs").read_text().split()]


def _remove(folder: Path, attempts: int = 100) -> None:
    """Empty ``folder`` into its parent and rmdir it; a process that forks while being moved, or
    is exiting, keeps it busy for a moment, so this tries again (``attempts`` x 10 ms)."""
    for attempt in range(attempts):
        for pid in _pids(folder):
            with contextlib.suppress(ProcessLookupError):  # exited meanwhile
                _write(folder.parent / "cgroup.procs", str(pid))
        try:
            folder.rmdir()
            return
        except OSError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.01)
