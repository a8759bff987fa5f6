"""``/metrics`` of a server of several worker processes: prometheus-client's multiprocess mode.

Every worker writes its values to its own mmap files in one directory (``PROMETHEUS_MULTIPROC_DIR``,
``<run dir>/metrics``), named as prometheus-client's collector parses them: ``counter_<pid>.db``,
``histogram_<pid>.db``, ``gauge_livesum_<pid>.db``, ``gauge_livemin_<pid>.db``. A scrape of any
worker reads them all (``render_metrics``) and gives the server's totals:

- counters and histograms: the sum over every worker that ran since the server started, the dead
  ones included (a counter never goes down when a worker dies);
- ``batchserve_queue_rows``: the sum over the live workers; ``batchserve_model_ready``: the minimum
  over the live workers (1 only when the model is ready in every worker that runs). The answering
  worker's own values are read at the scrape; the others' are at most ``REFRESH_INTERVAL_S`` old
  (``refresh_forever``).

``GET /metrics?per_worker=true`` gives each worker's own series instead, labelled
``worker="<index>"`` (from the workers' status files), ``worker="retired"`` for the sum of the
workers that died, and ``pid="<pid>"`` for a process no status file names yet.

The supervisor calls ``retire_worker`` when a worker has exited: its live gauges are dropped and its
counters and histograms folded into one archive file per type, so a scrape reads at most four files
per live worker and three archives, however often workers restart.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from batchserve.metrics import REFRESH_INTERVAL_S, Metrics
from batchserve.metrics_bulk import Histograms, as_histograms

if TYPE_CHECKING:
    from batchserve.cluster.rundir import Cluster
    from batchserve.state import AppState

ARCHIVE = "archive"
"""The pid part of the files that hold the dead workers' sums (``counter_archive.db``, ...)."""
FOLDED_TYPES = ("counter", "histogram", "summary")
"""The file types whose values outlive their process (gauges in live modes die with it)."""
LOCK_NAME = "retire.lock"
"""flock(2)ed by a scrape (shared) and by ``retire_worker`` (exclusive): a scrape sees a dead
worker's values either in its own file or in the archive, never in both or neither."""
RETIRED = "retired"
"""The ``worker`` label of the archive's series in the per-worker view."""


async def scrape_metrics(state: AppState, *, per_worker: bool = False) -> tuple[bytes, str]:
    """``render_metrics`` for the ``/metrics`` route: off the event loop in a worker, which reads
    every worker's files; on it in one process, whose values are in memory (as before workers)."""
    if state.metrics.multiprocess_dir is None:
        return render_metrics(state, per_worker=per_worker)
    return await asyncio.to_thread(render_metrics, state, per_worker=per_worker)


async def read_metrics(state: AppState) -> list[Metric]:
    """The families ``/metrics`` shows (the server's totals, whichever worker answers), for code
    that reads their values (v2's statistics, ``batchserve/v2/stats.py``); off the event loop in
    a worker, as ``scrape_metrics``."""
    if state.metrics.multiprocess_dir is None:
        return list(Histograms(state.metrics.registry).collect())
    return await asyncio.to_thread(lambda: list(_collector(state).collect()))


def _collector(state: AppState, workers: Mapping[str, str] | None = None) -> Histograms | DirectoryCollector:
    """What ``/metrics`` renders: this process's registry, or every worker's files (``workers``:
    ``DirectoryCollector``'s)."""
    metrics = state.metrics
    if metrics.multiprocess_dir is None:
        return Histograms(metrics.registry)  # the bulk histograms as histograms
    metrics.refresh()  # this worker's state gauges as they are now
    return DirectoryCollector(metrics.multiprocess_dir, workers)


def render_metrics(state: AppState, *, per_worker: bool = False) -> tuple[bytes, str]:
    """The body of ``/metrics`` and its content type. One process: its own registry, as always
    (``per_worker`` changes nothing: there is one). A worker: every worker's files, merged, or
    with ``per_worker`` one series per worker (safe to call from any thread)."""
    workers = None
    if per_worker and state.metrics.multiprocess_dir is not None:
        workers = worker_names(state.cluster) if state.cluster is not None else {}
    registry = CollectorRegistry()
    registry.register(_collector(state, workers))
    return generate_latest(registry), CONTENT_TYPE_LATEST


class DirectoryCollector:
    """The metrics in a multiprocess directory, read under its lock at each ``collect``.

    ``workers``: ``None`` for the sums over the workers (prometheus-client's own merge); else one
    series per process, labelled ``worker=workers[pid]`` or, for a pid not in it, ``pid=pid``."""

    def __init__(self, metrics_dir: Path, workers: Mapping[str, str] | None = None) -> None:
        self._dir = metrics_dir
        self._workers = workers

    def collect(self) -> Iterable[Metric]:
        with _locked(self._dir, fcntl.LOCK_SH):
            files = sorted(str(p) for p in self._dir.glob("*.db"))
            if self._workers is None:
                return as_histograms(MultiProcessCollector.merge(files, accumulate=True))  # type: ignore[no-untyped-call]
            return as_histograms(_per_process(files, self._workers))


def _per_process(files: list[str], workers: Mapping[str, str]) -> list[Metric]:
    by_pid: dict[str, list[str]] = {}
    for path in files:
        by_pid.setdefault(_pid_of(path), []).append(path)
    families: dict[str, Metric] = {}
    for pid, group in by_pid.items():
        if pid == ARCHIVE:
            label = {"worker": RETIRED}
        else:
            label = {"worker": workers[pid]} if pid in workers else {"pid": pid}
        merged: Iterable[Metric] = MultiProcessCollector.merge(group, accumulate=True)  # type: ignore[no-untyped-call]
        for metric in merged:
            # Gauges in the modes that keep one series per process carry a pid label: ours replaces it.
            samples = [s._replace(labels={**{k: v for k, v in s.labels.items() if k != "pid"}, **label})
                       for s in metric.samples]
            family = families.setdefault(metric.name, metric)
            if family is metric:
                metric.samples = samples
            else:
                family.samples.extend(samples)
    return list(families.values())


def _pid_of(path: str) -> str:
    """The pid part of a file's name, as the collector parses it: ``<type>_<pid>.db``,
    ``gauge_<mode>_<pid>.db``."""
    parts = Path(path).name.removesuffix(".db").split("_")
    return parts[2] if parts[0] == "gauge" else parts[1]


def worker_names(cluster: Cluster) -> dict[str, str]:
    """Each worker's pid (as a string) -> its index, from the workers' status files; a worker
    whose file is missing or unreadable (starting, or being rewritten) is left out."""
    names: dict[str, str] = {}
    for index in range(cluster.count):
        try:
            status = json.loads(cluster.status_path(index).read_text(encoding="utf-8"))
            names[str(int(status["pid"]))] = str(index)
        except (OSError, ValueError, TypeError, KeyError):
            continue
    return names


def retire_worker(metrics_dir: Path, pid: int) -> None:
    """Account for worker ``pid``, which has exited: its live gauges (queued rows, readiness) leave
    the scrapes, and its counter, histogram and summary values move into the archive files, so
    the totals stay as they were and the files a scrape reads stay bounded.

    The supervisor calls it after reaping the worker (never for one still running: what it wrote
    after the fold would be lost). Calling it twice, or for a pid that wrote nothing, is harmless.
    Values are summed key by key as the files hold them (a histogram's buckets there are not
    cumulative), which is prometheus-client's ``merge(..., accumulate=False)`` without going
    through its sample names."""
    with _locked(metrics_dir, fcntl.LOCK_EX):
        mark_process_dead(pid, str(metrics_dir))  # type: ignore[no-untyped-call]
        for kind in FOLDED_TYPES:
            dead = metrics_dir / f"{kind}_{pid}.db"
            if dead.exists():
                _fold(dead, metrics_dir / f"{kind}_{ARCHIVE}.db")


def _fold(dead: Path, archive: Path) -> None:
    totals: dict[str, tuple[float, float]] = {}
    for path in (archive, dead):
        if not path.exists():
            continue
        for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(str(path)):  # type: ignore[no-untyped-call]
            total, latest = totals.get(key, (0.0, 0.0))
            totals[key] = (total + value, max(latest, timestamp))
    # Written aside (a name the collector's ``*.db`` glob skips), then swapped in.
    scratch = archive.with_name(f".{archive.stem}.tmp")
    scratch.unlink(missing_ok=True)
    writer = MmapedDict(str(scratch))  # type: ignore[no-untyped-call]
    try:
        for key, (value, timestamp) in totals.items():
            writer.write_value(key, value, timestamp)  # type: ignore[no-untyped-call]
    finally:
        writer.close()  # type: ignore[no-untyped-call]
    os.replace(scratch, archive)
    dead.unlink()


@contextmanager
def _locked(metrics_dir: Path, operation: int) -> Iterator[None]:
    fd = os.open(metrics_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, operation)
        yield
    finally:
        os.close(fd)  # releases the lock


def start_refreshing(metrics: Metrics) -> asyncio.Task[None] | None:
    """In a worker, the task that keeps its state gauges true in its files; ``None`` in one process
    (they are read at scrape time there). Cancel it at shutdown."""
    if metrics.multiprocess_dir is None:
        return None
    return asyncio.create_task(refresh_forever(metrics), name="refresh-metrics")


async def refresh_forever(metrics: Metrics, interval_s: float = REFRESH_INTERVAL_S) -> None:
    """Write the state gauges every ``interval_s`` (two mmap writes per model: microseconds)."""
    while True:
        metrics.refresh()
        await asyncio.sleep(interval_s)
