"""The parts of --workers that need no server: the cores a server may use (affinity and the
cgroup quota), the ``auto`` rule, and how a worker reads another's status file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from batchserve.cluster.cores import (
    TORCH_BASE_BYTES,
    WORKER_BASE_BYTES,
    auto_workers,
    available_cores,
    available_memory,
    worker_memory_estimate,
)
from batchserve.cluster.rundir import Cluster, run_dir_parent
from batchserve.cluster.status import STUCK_S, read_workers
from batchserve.config import ModelConfig

AFFINITY = len(os.sched_getaffinity(0))


@pytest.mark.parametrize(("files", "expected"), [
    ({}, AFFINITY),  # no cgroup files: the affinity mask
    ({"cpu.max": "max 100000\n"}, AFFINITY),  # v2, no limit
    ({"cpu.max": "100000 100000\n"}, 1),  # v2, one CPU
    ({"cpu.max": "50000 100000\n"}, 1),  # half a CPU still runs one thread
    ({"cpu.max": "150000 100000\n"}, min(AFFINITY, 2)),  # 1.5 CPUs: two threads, each part-time
    ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),  # v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, AFFINITY),  # v1, none
])
def test_the_cores_are_the_affinity_capped_by_the_cgroup_quota(tmp_path: Path, files: dict[str, str],
                                                               expected: int) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert available_cores(tmp_path) == expected


def config(instances: int = 1, **options: int) -> ModelConfig:
    return ModelConfig(name="m", backend="sklearn", path=Path("m.joblib"), instances=instances,
                       options=options)


def test_auto_divides_the_cores_by_what_one_worker_keeps_busy() -> None:
    assert auto_workers([config()], 16) == 16
    assert auto_workers([config(instances=2)], 16) == 8
    assert auto_workers([config(instances=2, torch_threads=4), config()], 16) == 2
    assert auto_workers([config(threads=32)], 16) == 1  # never 0
    assert auto_workers([], 4) == 4


def write(cluster: Cluster, index: int, **status: object) -> None:
    cluster.status_path(index).write_text(json.dumps(status))


def test_a_worker_is_ready_stuck_or_not_running_from_its_status_file(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, 0, 4)
    cluster.create_dirs()
    now = time.time()
    write(cluster, 0, pid=os.getpid(), written=now, ready=True)
    write(cluster, 1, pid=os.getpid(), written=now - STUCK_S - 1, ready=True)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    write(cluster, 2, pid=int(gone.stdout), written=now, ready=True)  # its process has ended
    views = read_workers(cluster, now)  # worker 3 never wrote one
    assert [v.ready for v in views] == [True, False, False, False]
    assert [v.stuck for v in views] == [False, True, False, False]
    assert views[1].reason() == f"stuck: no status for {STUCK_S + 1:.0f} s"
    assert views[2].reason() == views[3].reason() == "not running (starting, or being restarted)"
    write(cluster, 0, pid=os.getpid(), written=now, ready=False,
          models={"a": {"state": "loading"}, "b": {"state": "ready"}, "c": {"state": "unloaded"}})
    assert read_workers(cluster, now)[0].reason() == "models not ready: ['a']"


def test_auto_is_capped_by_the_memory_the_workers_would_take(tmp_path: Path) -> None:
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"\0" * (50 * 2**20))
    torch_model = ModelConfig(name="r", backend="resnet50", path=weights)
    estimate = worker_memory_estimate([torch_model])
    assert estimate == WORKER_BASE_BYTES + TORCH_BASE_BYTES + 2 * 50 * 2**20
    assert auto_workers([torch_model], 64, memory_bytes=4 * estimate) == 3  # 80% of 4 workers' worth
    assert auto_workers([torch_model], 2, memory_bytes=100 * estimate) == 2  # the cores decide
    assert auto_workers([torch_model], 64, memory_bytes=estimate // 2) == 1  # never 0
    assert worker_memory_estimate([config()]) == WORKER_BASE_BYTES  # no torch, no artifact


@pytest.mark.parametrize(("files", "expected"), [
    ({"memory.max": "4294967296\n"}, 4 * 2**30),  # v2 limit
    ({"memory.max": "max\n"}, 16 * 2**30),  # v2, none: the machine's
    ({"memory/memory.limit_in_bytes": "1073741824\n"}, 2**30),  # v1
    ({"memory/memory.limit_in_bytes": "9223372036854771712\n"}, 16 * 2**30),  # v1, none
])
def test_the_memory_is_the_cgroup_limit_else_the_machines(tmp_path: Path, files: dict[str, str],
                                                          expected: int) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(f"MemTotal:       {16 * 2**20} kB\nMemFree:        1 kB\n")
    assert available_memory(tmp_path, meminfo) == expected


def test_the_run_directory_goes_to_a_memory_filesystem_with_room_unless_tmpdir_says_otherwise(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TMPDIR", raising=False)
    assert run_dir_parent(tmp_path, min_free=1) == str(tmp_path)
    assert run_dir_parent(tmp_path, min_free=1 << 62) is None  # too little room
    assert run_dir_parent(tmp_path / "absent", min_free=1) is None
    (tmp_path / "file").write_text("")
    assert run_dir_parent(tmp_path / "file", min_free=1) is None
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    assert run_dir_parent(tmp_path, min_free=1) is None  # the user's choice: tempfile's default
