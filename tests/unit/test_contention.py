"""The contention probe (``batchserve_planning/contention.py``): CPU that processes outside this
one's tree take while a run goes on, and what is not counted (this process and its children)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from batchserve_planning.contention import (
    BUSY_SHARE,
    Contention,
    Probe,
    busy_cores,
    others_cpu_s,
    summary,
    worst,
)

from tests.support.hogs import spinning

pytest.importorskip("psutil")

HOG = "import time\nend = time.monotonic() + 30\nwhile time.monotonic() < end: pass\n"


@contextmanager
def hog(*, outside: bool) -> Iterator[int]:
    """A process spinning on a CPU: outside this tree (``spinning``) or a child of this process."""
    if outside:
        with spinning(1, seconds=30) as pids:
            yield pids[0]
        return
    child = subprocess.Popen([sys.executable, "-c", HOG])
    try:
        yield child.pid
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)


def measure(seconds: float) -> Contention:
    probe = Probe()
    probe.start()
    time.sleep(seconds)
    return probe.stop()


@pytest.mark.timeout(60)
def test_a_process_outside_this_tree_is_counted_and_a_child_is_not() -> None:
    cpus = os.cpu_count() or 1
    with hog(outside=True) as pid:
        time.sleep(0.2)
        assert pid in others_cpu_s()
        busy = measure(1.0)
    # One spinning process: up to one CPU's worth, whatever else this machine runs (not timed:
    # a fifth of a CPU over the second is far below what a spinning process gets).
    assert busy.others_cpu >= 0.2 / cpus
    assert busy.contended == (busy.others_cpu > BUSY_SHARE or busy.steal > 0.05)
    with hog(outside=False) as pid:
        time.sleep(0.2)
        # The same spinning, as this process's child (a server or the load generator): not other work.
        assert pid not in others_cpu_s()
        assert os.getpid() not in others_cpu_s()


@pytest.mark.timeout(60)
def test_busy_cores_reads_a_core_kept_busy() -> None:
    cpu = min(os.sched_getaffinity(0))
    with hog(outside=True) as pid:
        os.sched_setaffinity(pid, {cpu})
        time.sleep(0.2)
        busy = busy_cores({cpu}, seconds=1.0)
    # A process spinning on the core: most of it (not timed: half a core is far below what a
    # spinning process gets on a core of its own).
    assert 0.5 <= busy <= 1.0


def test_the_summary_names_the_contended_measurements() -> None:
    steps: list[tuple[str, dict[str, Any]]] = [("#1 @ 1 clients", {"others_cpu": 0.02, "steal": 0.0}),
             ("#1 @ 2 clients", {"others_cpu": 0.40, "steal": 0.0}),
             ("#2 @ 1 clients", {"others_cpu": 0.01, "steal": 0.10}),
             ("old", {"others_cpu": None})]
    result = summary(steps)
    assert result["measurements"] == 3
    assert [c.split(" (")[0] for c in result["contended"]] == ["#1 @ 2 clients", "#2 @ 1 clients"]
    assert result["max_others_cpu"] == 0.40 and result["max_steal"] == 0.10
    assert worst([Contention(0.1, 0.0), Contention(0.05, 0.2)]) == Contention(0.1, 0.2)
    assert worst([]) is None


def test_other_work_is_never_more_than_the_machine_was_busy(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reading of others' CPU larger than the run could hold (a process read late in the
    scan, a pid counted twice) is capped at the machine's busy share, which is at most 1."""
    from batchserve_planning import contention

    readings = iter([{1: 0.0}, {1: 1000.0}])
    monkeypatch.setattr(contention, "others_cpu_s", lambda: next(readings))
    probe = Probe()
    probe.start()
    time.sleep(0.2)
    reading = probe.stop()
    assert 0.0 <= reading.others_cpu <= 1.0
