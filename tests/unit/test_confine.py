"""confine.CpuQuota on this machine's cgroups: a real busy process tree under a 0.5-CPU quota.

What is checked is what the kernel's own files say (the pids in the group, the quota and period
written, periods the group was throttled in), not how fast anything ran.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from batchserve_planning.confine import PERIOD_US, CpuQuota, quota_support

# Spins on two threads; on "go" it forks a child that spins too and prints the child's pid.
SPINNER = """
import os, sys, threading
def spin():
    while True:
        pass
sys.stdin.readline()
child = os.fork()
if child == 0:
    spin()
print(child, flush=True)
threading.Thread(target=spin, daemon=True).start()
spin()
"""

pytestmark = pytest.mark.skipif(quota_support() is not None, reason=str(quota_support()))


def _stat(group: Path) -> dict[str, int]:
    return {key: int(value) for key, value in
            (line.split() for line in (group / "cpu.stat").read_text().splitlines())}


def _quota_and_period(quota: CpuQuota) -> tuple[int, int]:
    if quota.version == 1:
        return (int((quota.path / "cpu.cfs_quota_us").read_text()),
                int((quota.path / "cpu.cfs_period_us").read_text()))
    limit, period = (quota.path / "cpu.max").read_text().split()
    return int(limit), int(period)


def _pids(folder: Path) -> set[int]:
    return {int(pid) for pid in (folder / "cgroup.procs").read_text().split()}


def test_a_busy_process_tree_is_throttled_to_its_quota_and_release_removes_the_group() -> None:
    quota = CpuQuota(0.5, "test-spinner")
    spinner = subprocess.Popen([sys.executable, "-c", SPINNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True)
    child: int | None = None
    try:
        quota.add(spinner.pid)
        assert spinner.stdin is not None and spinner.stdout is not None
        spinner.stdin.write("go\n")
        spinner.stdin.flush()
        child = int(spinner.stdout.readline())
        # The process and the child it forked after joining are in the group, with the quota asked.
        assert {spinner.pid, child} <= _pids(quota.path) == set(quota.pids())
        assert _quota_and_period(quota) == (PERIOD_US // 2, PERIOD_US)
        # Three busy threads against half a CPU: the kernel throttles the group (a bounded wait
        # for the first throttled period; nothing is timed).
        deadline = time.monotonic() + 60
        while _stat(quota.path)["nr_throttled"] == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _stat(quota.path)["nr_throttled"] > 0
        assert quota.usage_s() > 0
        # release() with the processes still running: they go back to the parent, the group goes.
        quota.release()
        assert not quota.path.exists()
        assert {spinner.pid, child} <= _pids(quota.path.parent)
        assert quota.usage_s() > 0  # the last reading, kept
        quota.release()  # a second release does nothing
    finally:
        if child is not None:  # first: it holds the pipes open too
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        spinner.kill()
        spinner.communicate(timeout=30)
        quota.release()


def test_a_fractional_quota_is_written_as_asked() -> None:
    quota = CpuQuota(1.25, "test-fraction")
    try:
        assert _quota_and_period(quota) == (125_000, PERIOD_US)
        assert quota.pids() == []
    finally:
        quota.release()
    assert not quota.path.exists()


def test_a_quota_must_be_positive() -> None:
    with pytest.raises(ValueError, match="> 0 CPUs"):
        CpuQuota(0, "test-zero")
