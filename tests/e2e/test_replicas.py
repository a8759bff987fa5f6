"""replicas.ReplicaSet: two real echo servers behind a real nginx; and a server under a CPU quota
(serverproc.ManagedServer's ``quota_cpus``)."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from batchserve_planning.confine import quota_support
from batchserve_planning.proctree import tree_pids
from batchserve_planning.replicas import ReplicaSet, nginx_missing
from batchserve_planning.serverproc import ManagedServer

from tests.support import SERVER_ENV, sample, write_models

ECHO = {"name": "echo", "backend": "echo", "path": "unused", "max_batch_size": 1}


def _alive(pid: int) -> bool:
    """Running, or exited and not yet reaped by its parent."""
    return Path(f"/proc/{pid}").exists()


@pytest.mark.skipif(nginx_missing() is not None, reason=str(nginx_missing()))
def test_two_replicas_behind_nginx_both_answer_and_stop_leaves_nothing(tmp_path: Path) -> None:
    config = write_models(tmp_path / "models.toml", [ECHO])
    allowed = sorted(os.sched_getaffinity(0))
    placements = [{allowed[0]}, {allowed[-1]}]
    logs = tmp_path / "logs"
    replicas = ReplicaSet(config, placements, logs, env=SERVER_ENV)
    try:
        replicas.wait_ready(120)
        assert replicas.nginx is not None
        pids = [pid for process in [replicas.nginx, *(s.process for s in replicas.servers)]
                for pid in tree_pids(process.pid)]
        assert len(pids) >= 4  # nginx's master and worker, two servers
        assert (logs / "nginx.pid").read_text().strip() == str(replicas.nginx.pid)
        for index, server in enumerate(replicas.servers):
            assert os.sched_getaffinity(server.process.pid) == placements[index]
        with httpx.Client(base_url=replicas.url, timeout=30) as client:
            answers = [client.post("/predict/echo", json={"inputs": [float(n)]}) for n in range(40)]
        assert [a.status_code for a in answers] == [200] * 40
        assert [a.json()["outputs"] for a in answers] == [[2.0 * n] for n in range(40)]
        # Each replica's own /metrics: both answered some, together all 40.
        served = [sample(server.url, "batchserve_requests_total", model="echo", code="200")
                  for server in replicas.servers]
        assert all(count > 0 for count in served), served
        assert sum(served) == 40
        # /metrics through nginx is always replica 0's.
        first = httpx.get(f"{replicas.url}/metrics", timeout=10).text
        assert first == httpx.get(f"{replicas.servers[0].url}/metrics", timeout=10).text
        assert all(size is not None and size > 0 for size in replicas.peak_rss_bytes())
    finally:
        replicas.stop()
    assert not [pid for pid in pids if _alive(pid)]
    assert not (logs / "nginx.pid").exists()  # nginx removes it as it exits cleanly
    replicas.stop()  # a second stop does nothing


@pytest.mark.skipif(quota_support() is not None, reason=str(quota_support()))
def test_a_server_under_a_quota_runs_in_its_group_until_it_stops(tmp_path: Path) -> None:
    config = write_models(tmp_path / "models.toml", [ECHO])
    server = ManagedServer(config, quota_cpus=0.5, env=SERVER_ENV, args=["--workers", "2"])
    try:
        assert server.quota is not None
        group = server.quota.path
        server.wait_ready(120)
        members = {int(pid) for pid in (group / "cgroup.procs").read_text().split()}
        # The server and the workers it started after joining the group.
        assert set(tree_pids(server.process.pid)) <= members
        assert len(members) >= 3
        if server.quota.version == 1:
            limit = [(group / name).read_text() for name in ("cpu.cfs_quota_us", "cpu.cfs_period_us")]
        else:
            limit = (group / "cpu.max").read_text().split()
        assert [int(value) for value in limit] == [50_000, 100_000]
        assert httpx.post(f"{server.url}/predict/echo", json={"inputs": [1.0]}, timeout=30).status_code == 200
    finally:
        server.stop()
    assert not group.exists()
    assert server.quota.usage_s() > 0
