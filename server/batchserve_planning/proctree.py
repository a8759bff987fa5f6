"""The memory of a server that is a tree of processes: a supervisor and its workers.

With ``--workers N`` (N > 1) the process ``batchserve serve`` starts is a supervisor, and the
workers, which hold the models, are its children. What the server costs in memory is what the
whole tree holds: ``tree_peak_rss`` sums the peak resident set (``VmHWM`` in
``/proc/PID/status``) of the process and of every descendant alive when it is called.

A sum of peaks is an upper bound of the peak of the sum: each process's high-water mark may
have come at a different moment, so the tree as a whole may never have held this much at once.
For sizing a memory limit that is the safe side. A worker that died and was restarted counts
with its new process's peak only.

Children come from ``/proc/PID/task/TID/children`` (Linux 3.5+, ``CONFIG_PROC_CHILDREN``);
without it, from psutil, whose readings are samples of the current resident set, not peaks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TreeMemory:
    bytes: int
    """Sum over the processes (see the module's docstring)."""
    processes: int
    """How many processes the sum covers: 1 + the workers (and anything else they started)."""


def status_kib(pid: int | str, field: str) -> int | None:
    """A ``kB`` field of ``/proc/PID/status`` (``VmHWM``, ``VmRSS``; ``pid`` may be ``"self"``);
    None without it."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else None


def descendants(pid: int) -> list[int] | None:
    """Every live descendant of ``pid``, children before grandchildren; None where ``/proc``
    does not list children (then ``psutil_descendants``)."""
    found: list[int] = []
    level = [pid]
    while level:
        below: list[int] = []
        for parent in level:
            tasks = Path(f"/proc/{parent}/task")
            try:
                files = [task / "children" for task in tasks.iterdir()]
            except OSError:
                if parent == pid:
                    return None
                continue  # exited meanwhile
            if parent == pid and not any(f.exists() for f in files):
                return None  # a kernel without CONFIG_PROC_CHILDREN
            for path in files:
                try:
                    below.extend(int(child) for child in path.read_text().split())
                except OSError:
                    continue
        below = [child for child in dict.fromkeys(below) if child not in found and child != pid]
        found.extend(below)
        level = below
    return found


def psutil_descendants(pid: int) -> list[int]:
    try:
        import psutil
    except ImportError:
        return []
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def tree_pids(pid: int) -> list[int]:
    """``pid`` and its live descendants."""
    below = descendants(pid)
    return [pid, *(psutil_descendants(pid) if below is None else below)]


def tree_peak_rss(pid: int) -> TreeMemory | None:
    """The sum of the high-water marks of ``pid`` and its live descendants; None where there
    is no ``VmHWM`` (no ``/proc``: see ``tree_rss``)."""
    total = count = 0
    for member in tree_pids(pid):
        peak = status_kib(member, "VmHWM")
        if peak is None:
            if member == pid:
                return None
            continue  # exited between the listing and the reading
        total += peak * 1024
        count += 1
    return TreeMemory(total, count)


def tree_rss(pid: int) -> TreeMemory | None:
    """The resident set of the tree now, from psutil (where ``/proc`` has no peak)."""
    try:
        import psutil
    except ImportError:
        return None
    total = count = 0
    for member in tree_pids(pid):
        try:
            total += int(psutil.Process(member).memory_info().rss)
            count += 1
        except psutil.Error:
            continue
    return TreeMemory(total, count) if count else None
