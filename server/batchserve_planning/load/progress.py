"""Live progress bars on stderr (``rich``), so stdout keeps the report.

rich is maintained, typed (mypy strict checks the calls), draws several bars and
free text columns at once, and stays quiet when stderr is not a terminal.
"""

from __future__ import annotations

import sys
from contextlib import AbstractContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.progress import Progress as RichProgress

    from batchserve_planning.load.generator import Progress


class Bars(AbstractContextManager["Bars"]):
    """A set of progress bars; with ``enabled=False`` every call does nothing."""

    def __init__(self, enabled: bool = True) -> None:
        self._progress: RichProgress | None = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(), console=Console(stderr=True), refresh_per_second=8)

    def __enter__(self) -> Bars:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.stop()

    def add(self, description: str, total: float | None) -> int:
        if self._progress is None:
            return 0
        return int(self._progress.add_task(description, total=total, status=""))

    def update(self, task: int, **fields: Any) -> None:
        if self._progress is not None:
            self._progress.update(task, **fields)  # type: ignore[arg-type]

    def remove(self, task: int) -> None:
        if self._progress is not None:
            self._progress.remove_task(task)  # type: ignore[arg-type]

    def print(self, text: str) -> None:
        """A line above the bars (or on stderr without them)."""
        if self._progress is not None:
            self._progress.console.print(text, highlight=False, markup=False)
        else:
            print(text, file=sys.stderr)

    def load_callback(self, task: int, duration_s: float | None, count: int | None) -> Any:
        """A ``generator`` progress callback that moves ``task`` by time (or by requests)."""

        def show(progress: Progress) -> None:
            if progress.phase == "warmup":
                self.update(task, completed=0, status=f"warming up ({-progress.elapsed_s:.1f} s left)")
                return
            elapsed = max(progress.elapsed_s, 1e-9)
            done = progress.responses if count is not None else min(elapsed, duration_s or elapsed)
            status = (f"{progress.responses:,} responses, {progress.responses / elapsed:,.0f}/s, "
                      f"{progress.errors:,} non-2xx")
            if progress.phase == "drain":
                status += ", waiting for the last answers"
            self.update(task, completed=done, status=status)

        return show
