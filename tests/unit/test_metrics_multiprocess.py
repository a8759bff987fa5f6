"""Metrics across worker processes (prometheus-client's multiprocess mode): what a scrape of the
shared directory shows while workers run, after one dies (``retire_worker``), and after many.

The writers are real processes with ``PROMETHEUS_MULTIPROC_DIR`` set before they start, as the
supervisor starts workers; this test process never enters multiprocess mode (it only reads the
files, as any worker's scrape does), so the other tests are not affected.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from batchserve.cluster.rundir import Cluster
from batchserve.metrics_multiprocess import ARCHIVE, DirectoryCollector, retire_worker, worker_names
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import SERVER_ENV

WRITER = r"""
import asyncio, json, sys
from batchserve.metrics import Metrics
from batchserve.metrics_multiprocess import start_refreshing

spec = json.loads(sys.argv[1])
metrics = Metrics(max_batch_size=8)
model = metrics.for_model("m")
for code, count in spec.get("codes", {}).items():
    for _ in range(count):
        model.count_request(int(code))
for seconds in spec.get("durations", []):
    model.request_duration.observe(seconds)
model.request_duration.flush()
if "device_peak" in spec:
    model.set_device_memory_peak(spec["device_peak"])
state = {"queue": spec.get("queue", 0), "ready": spec.get("ready", 1)}
model.watch_queue(lambda: state["queue"])
model.watch_ready(lambda: state["ready"])

async def main():
    refreshing = start_refreshing(metrics)
    print("written", flush=True)
    # Each line of stdin: a new queue length, written by the refresh task (never by this loop).
    reader = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        state["queue"] = int(line)
    refreshing.cancel()

if spec.get("stay"):
    asyncio.run(main())
"""


class Writer:
    """A process that writes known metrics into ``metrics_dir`` and, with ``stay``, keeps running
    (its live gauges count) until ``stop`` or ``kill``."""

    def __init__(self, metrics_dir: Path, **spec: Any) -> None:
        env = {**os.environ, **SERVER_ENV, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
        self.process = subprocess.Popen([sys.executable, "-c", WRITER, json.dumps(spec)], env=env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.pid = self.process.pid
        if not spec.get("stay"):
            self.stop()
            assert self.process.returncode == 0
            return
        assert self.process.stdout is not None
        assert self.process.stdout.readline() == "written\n"

    def set_queue(self, rows: int) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{rows}\n")
        self.process.stdin.flush()

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.stop()

    def stop(self) -> None:
        """Close its stdin (it exits) and wait for it."""
        self.process.communicate(timeout=60)


@pytest.fixture
def metrics_dir(tmp_path: Path) -> Path:
    path = tmp_path / "metrics"
    path.mkdir()
    return path


@pytest.fixture
def writers() -> Iterator[list[Writer]]:
    started: list[Writer] = []
    yield started
    for writer in started:
        writer.stop()


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(metrics_dir: Path, workers: dict[str, str] | None = None) -> Samples:
    """Every sample a worker's /metrics would show, by name and labels."""
    registry = CollectorRegistry()
    registry.register(DirectoryCollector(metrics_dir, workers))
    text = generate_latest(registry).decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_counters_and_histograms_add_up_over_workers_and_outlive_a_dead_one(
        metrics_dir: Path, writers: list[Writer]) -> None:
    writers.append(a := Writer(metrics_dir, codes={"200": 5, "429": 1}, durations=[0.002, 0.3], stay=True))
    writers.append(b := Writer(metrics_dir, codes={"200": 3}, durations=[0.002], stay=True))
    before = scrape(metrics_dir)
    assert value(before, "batchserve_requests_total", model="m", code="200") == 8
    assert value(before, "batchserve_requests_total", model="m", code="429") == 1
    assert value(before, "batchserve_request_duration_seconds_count", model="m") == 3
    assert value(before, "batchserve_request_duration_seconds_bucket", model="m", le="0.0025") == 2
    assert value(before, "batchserve_request_duration_seconds_sum", model="m") == pytest.approx(0.304)

    b.kill()
    retire_worker(metrics_dir, b.pid)
    after = scrape(metrics_dir)
    live_gauges = ("batchserve_queue_rows", "batchserve_model_ready")
    counted = {k: v for k, v in after.items() if k[0] not in live_gauges}
    assert counted == {k: v for k, v in before.items() if k in counted} and len(counted) > 10
    assert not list(metrics_dir.glob(f"*_{b.pid}.db"))  # folded into the archives
    retire_worker(metrics_dir, b.pid)  # twice: harmless
    assert scrape(metrics_dir) == after
    a.stop()


def test_queue_rows_are_summed_and_readiness_is_the_minimum_over_live_workers(
        metrics_dir: Path, writers: list[Writer]) -> None:
    writers.append(a := Writer(metrics_dir, queue=3, ready=1, stay=True))
    writers.append(b := Writer(metrics_dir, queue=4, ready=0, stay=True))
    samples = scrape(metrics_dir)
    assert value(samples, "batchserve_queue_rows", model="m") == 7
    assert value(samples, "batchserve_model_ready", model="m") == 0

    b.kill()
    retire_worker(metrics_dir, b.pid)
    samples = scrape(metrics_dir)
    assert value(samples, "batchserve_queue_rows", model="m") == 3
    assert value(samples, "batchserve_model_ready", model="m") == 1
    a.stop()


def test_the_device_memory_peak_is_the_largest_live_workers(
        metrics_dir: Path, writers: list[Writer]) -> None:
    writers.append(a := Writer(metrics_dir, device_peak=3_000, stay=True))
    writers.append(b := Writer(metrics_dir, device_peak=5_000, stay=True))
    writers.append(c := Writer(metrics_dir, stay=True))  # a CPU model: no series at all
    assert value(scrape(metrics_dir), "batchserve_device_memory_peak_bytes", model="m") == 5_000
    b.kill()
    retire_worker(metrics_dir, b.pid)
    assert value(scrape(metrics_dir), "batchserve_device_memory_peak_bytes", model="m") == 3_000
    a.kill()
    retire_worker(metrics_dir, a.pid)
    assert value(scrape(metrics_dir), "batchserve_device_memory_peak_bytes", model="m") is None
    c.stop()


def test_a_workers_refresh_task_writes_its_state_gauges_as_they_change(
        metrics_dir: Path, writers: list[Writer]) -> None:
    writers.append(a := Writer(metrics_dir, queue=0, stay=True))
    a.set_queue(11)
    deadline = time.monotonic() + 30  # written within REFRESH_INTERVAL_S; waited for, not timed
    while (rows := value(scrape(metrics_dir), "batchserve_queue_rows", model="m")) != 11:
        assert time.monotonic() < deadline, f"the queue gauge stayed {rows}"
        time.sleep(0.01)


def test_the_files_a_scrape_reads_stay_bounded_however_many_workers_died(metrics_dir: Path) -> None:
    for _ in range(12):
        gone = Writer(metrics_dir, codes={"200": 2}, durations=[0.01])
        retire_worker(metrics_dir, gone.pid)
    archives = [f"counter_{ARCHIVE}.db", f"histogram_{ARCHIVE}.db"]
    assert sorted(p.name for p in metrics_dir.glob("*.db")) == archives
    samples = scrape(metrics_dir)
    assert value(samples, "batchserve_requests_total", model="m", code="200") == 24
    assert value(samples, "batchserve_request_duration_seconds_count", model="m") == 12
    assert value(samples, "batchserve_request_duration_seconds_bucket", model="m", le="0.01") == 12


def test_per_worker_view_labels_each_workers_series_by_its_index(
        tmp_path: Path, metrics_dir: Path, writers: list[Writer]) -> None:
    cluster = Cluster(tmp_path, 0, 2)
    cluster.create_dirs()
    writers.append(a := Writer(metrics_dir, codes={"200": 5}, queue=2, stay=True))
    writers.append(b := Writer(metrics_dir, codes={"200": 3}, queue=1, stay=True))
    writers.append(stranger := Writer(metrics_dir, codes={"200": 1}, stay=True))
    cluster.status_path(0).write_text(json.dumps({"pid": a.pid, "index": 0}), encoding="utf-8")
    cluster.status_path(1).write_text(json.dumps({"pid": b.pid, "index": 1}), encoding="utf-8")
    assert worker_names(cluster) == {str(a.pid): "0", str(b.pid): "1"}

    samples = scrape(metrics_dir, worker_names(cluster))
    assert value(samples, "batchserve_requests_total", model="m", code="200", worker="0") == 5
    assert value(samples, "batchserve_requests_total", model="m", code="200", worker="1") == 3
    assert value(samples, "batchserve_requests_total", model="m", code="200", pid=str(stranger.pid)) == 1
    assert value(samples, "batchserve_queue_rows", model="m", worker="0") == 2

    b.kill()
    retire_worker(metrics_dir, b.pid)
    samples = scrape(metrics_dir, worker_names(cluster))
    assert value(samples, "batchserve_requests_total", model="m", code="200", worker="retired") == 3
    assert not [k for k in samples if ("worker", "1") in k[1]]  # its live gauges are gone too


def test_a_multiprocess_directory_set_after_prometheus_client_was_imported_is_refused(tmp_path: Path) -> None:
    script = ("import os, prometheus_client; os.environ['PROMETHEUS_MULTIPROC_DIR'] = os.getcwd()\n"
              "from batchserve.metrics import Metrics; Metrics(max_batch_size=1)")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, **SERVER_ENV}, timeout=60)
    assert done.returncode != 0
    assert "PROMETHEUS_MULTIPROC_DIR was set after prometheus_client was imported" in done.stderr
