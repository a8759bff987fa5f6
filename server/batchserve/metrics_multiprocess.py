"""Metrics across worker processes (prometheus-client's multiprocess mode)."""

from __future__ import annotations

from pathlib import Path


def retire_worker(metrics_dir: Path, pid: int) -> None:
    """A worker ended: drop its live gauges (its counters keep counting in the totals)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, str(metrics_dir))  # type: ignore[no-untyped-call]
