"""The memory of a server that is a process tree (a supervisor and its workers), summed over a
real tree of processes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import psutil
import pytest
from batchserve_planning.proctree import descendants, status_kib, tree_peak_rss, tree_pids

MIB = 2**20
BLOCK_MIB = 32
"""What every process below the root touches (the root, like a supervisor, holds no model)."""
TREE = r"""
import subprocess, sys
depth, width, mib = (int(a) for a in sys.argv[1:4])
block = b"\x01" * (mib << 20) if mib else b""  # written, so resident
kids = [subprocess.Popen([sys.executable, "-c", sys.argv[4], str(depth - 1), sys.argv[2], sys.argv[5],
                          sys.argv[4], sys.argv[5]], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        for _ in range(width if depth > 0 else 0)]
for kid in kids:
    assert kid.stdout.readline() == b"ready\n"
print("ready", flush=True)
sys.stdin.read()  # until the parent closes it
for kid in kids:
    kid.stdin.close()
    kid.wait()
"""


@pytest.fixture
def tree() -> Iterator[subprocess.Popen[bytes]]:
    """A root holding nothing, 2 children and 4 grandchildren holding BLOCK_MIB each."""
    with subprocess.Popen([sys.executable, "-c", TREE, "2", "2", "0", TREE, str(BLOCK_MIB)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE) as root:
        assert root.stdin is not None and root.stdout is not None
        try:
            assert root.stdout.readline() == b"ready\n"
            yield root
        finally:
            root.stdin.close()  # the root closes its children's, and waits for them
            root.wait(timeout=30)


def test_the_tree_is_found_below_the_root_as_psutil_finds_it(tree: subprocess.Popen[bytes]) -> None:
    below = descendants(tree.pid)
    assert below is not None and len(below) == 6
    assert set(below) == {child.pid for child in psutil.Process(tree.pid).children(recursive=True)}
    assert tree_pids(tree.pid)[0] == tree.pid


def test_the_peak_of_the_tree_sums_every_process(tree: subprocess.Popen[bytes]) -> None:
    memory = tree_peak_rss(tree.pid)
    assert memory is not None and memory.processes == 7
    root_peak = status_kib(tree.pid, "VmHWM")
    assert root_peak is not None and root_peak * 1024 < BLOCK_MIB * MIB  # the root alone: no block
    # The six blocks are in the sum, beside the root's own peak (and every interpreter's).
    assert memory.bytes >= root_peak * 1024 + 6 * BLOCK_MIB * MIB
    assert memory.bytes == sum((status_kib(pid, "VmHWM") or 0) * 1024 for pid in tree_pids(tree.pid))


def test_a_process_without_children_is_its_own_peak() -> None:
    with subprocess.Popen([sys.executable, "-c", "import sys; print('ready', flush=True); sys.stdin.read()"],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE) as alone:
        assert alone.stdout is not None and alone.stdout.readline() == b"ready\n"
        memory = tree_peak_rss(alone.pid)
        assert memory is not None and memory.processes == 1
        assert memory.bytes == (status_kib(alone.pid, "VmHWM") or 0) * 1024 > 0
        assert alone.stdin is not None
        alone.stdin.close()
    assert tree_peak_rss(alone.pid) is None  # gone: nothing to read
