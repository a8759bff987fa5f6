"""A third-party backend as a plugin author would write one, for batchserve's tests.

It is found through the ``batchserve.backends`` entry point declared in the
dist-info folder beside it (put this folder on ``sys.path`` / ``PYTHONPATH``).
Rows are numbers; the output is twice the number. ``options`` make it slow,
or make it fail on chosen inputs or at load.
"""

from __future__ import annotations

import math
import os
import threading
import time
from typing import Any

from batchserve.backends import Backend, LoadError
from batchserve.errors import InvalidInput
from pydantic import BaseModel, ConfigDict


class EchoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    delay_ms: float = 0.0
    slow_on: float | None = None
    """When set, only a batch holding this row takes ``delay_ms`` (so warmup is quick)."""
    fail_on: float | None = None
    fail_load: bool = False
    load_delay_ms: float = 0.0
    exit_on_load: int | None = None
    """End the process with this status as the model loads (a worker that crashes at start)."""
    started: str | None = None
    """A file to append ``<pid> <row>`` to as each row's batch starts (warmup's excepted)."""
    record: str | None = None
    """A file to append every row that was computed and answered (one per line)."""
    complex_output: bool = False
    """Answer complex numbers, which JSON cannot encode: a backend that breaks the contract."""
    preprocess_ms: float = 0.0
    """How long ``preprocess`` takes per item (``slow-decode`` only)."""
    hold_until: str | None = None
    """A file: ``predict_batch`` waits (up to 30 s) until it exists."""
    holds: dict[str, str] = {}
    """Row (as text: ``"1"``) -> file: a batch holding that row waits (up to 30 s) until the file
    exists; so that one batch can be held while the next one is, or is not."""


LOADED: dict[str, int] = {}
"""Copies of each model (by name) loaded or loading and not yet unloaded, in this process."""
PEAK: dict[str, int] = {}
"""The most copies of each model that were loaded or loading at once."""


class EchoBackend(Backend[float, float | complex]):
    Options = EchoOptions

    def load(self, device: str) -> None:
        name = self.config.name
        LOADED[name] = LOADED.get(name, 0) + 1
        PEAK[name] = max(PEAK.get(name, 0), LOADED[name])
        time.sleep(self.options.load_delay_ms / 1000)
        if self.options.exit_on_load is not None:
            os._exit(self.options.exit_on_load)
        if self.options.fail_load:
            LOADED[name] -= 1
            raise LoadError("told to fail at load")
        self.calls: list[list[float]] = []

    def warmup(self) -> None:
        record, self.options.record = self.options.record, None
        hold, self.options.hold_until = self.options.hold_until, None
        holds, self.options.holds = self.options.holds, {}
        started, self.options.started = self.options.started, None
        self.predict_batch([0.0])
        self.options.record, self.options.hold_until, self.options.holds = record, hold, holds
        self.options.started = started
        self.calls.clear()

    def unload(self) -> None:
        LOADED[self.config.name] -= 1

    def preprocess(self, item: Any, parameters: Any) -> float:
        if type(item) not in (int, float) or not math.isfinite(item):
            raise InvalidInput(f"expected a finite number, got {type(item).__name__}")
        return float(item)

    def predict_batch(self, rows: list[float]) -> list[float | complex]:
        self.calls.append(list(rows))
        if self.options.started:
            with open(self.options.started, "a", encoding="utf-8") as handle:
                handle.writelines(f"{os.getpid()} {row}\n" for row in rows)
        if self.options.fail_on is not None and self.options.fail_on in rows:
            raise InvalidInput(f"{self.options.fail_on} is poison")
        held = [self.options.hold_until] if self.options.hold_until is not None else []
        held += [path for row, path in self.options.holds.items() if float(row) in rows]
        deadline = time.monotonic() + 30
        for path in held:
            while not os.path.exists(path) and time.monotonic() < deadline:
                time.sleep(0.01)
        if self.options.delay_ms and self.options.slow_on in (None, *rows):
            time.sleep(self.options.delay_ms / 1000)
        if self.options.record:
            with open(self.options.record, "a", encoding="utf-8") as handle:
                handle.writelines(f"{row}\n" for row in rows)
        if self.options.complex_output:
            return [complex(2 * row) for row in rows]
        return [2 * row for row in rows]

    def describe(self) -> dict[str, Any]:
        return {"input": {"type": "number"}, "output": {"type": "number", "is": "2 * input"}}


class SlowDecodeBackend(EchoBackend):
    """The echo backend with heavy preprocessing, as image decoding is: on worker threads,
    ``preprocess_ms`` per item. ``describe`` tells how many items were preprocessed and the
    most requests preprocessing at once."""

    preprocess_in_thread = True

    def load(self, device: str) -> None:
        super().load(device)
        self._lock = threading.Lock()
        self._running = self.peak = self.preprocessed = 0

    def preprocess(self, item: Any, parameters: Any) -> float:
        with self._lock:  # a request's items run one after the other: running = requests
            self._running += 1
            self.peak = max(self.peak, self._running)
        try:
            time.sleep(self.options.preprocess_ms / 1000)
            with self._lock:
                self.preprocessed += 1
            return super().preprocess(item, parameters)
        finally:
            with self._lock:
                self._running -= 1

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "preprocessed": self.preprocessed, "peak": self.peak}
