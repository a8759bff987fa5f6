"""A third-party backend as a plugin author would write one, for batchserve's tests.

It is found through the ``batchserve.backends`` entry point declared in the
dist-info folder beside it (put this folder on ``sys.path`` / ``PYTHONPATH``).
Rows are numbers; the output is twice the number. ``options`` make it slow,
or make it fail on chosen inputs or at load. Beside it, two backends of a kind of model
(``batchserve.backends.kinds``) by their methods alone: ``sign`` (``FeatureRows``) and
``text-length`` (``SentenceEmbedder``).
"""

from __future__ import annotations

import math
import os
import random
import threading
import time
from collections.abc import Mapping
from typing import Any

from batchserve.backends import Backend, LoadError
from batchserve.backends.kinds import Embedding
from batchserve.errors import InvalidInput
from pydantic import BaseModel, ConfigDict


class EchoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    delay_ms: float = 0.0
    slow_on: float | None = None
    """When set, only a batch holding this row takes ``delay_ms`` (so warmup is quick)."""
    fail_on: float | None = None
    fail_load: bool = False
    fail_load_in_env: str | None = None
    """Fail at load in a process whose environment sets this variable: one worker of several,
    as when only one of them runs out of memory or cannot open the device."""
    load_delay_ms: float = 0.0
    load_until: str | None = None
    """A file: ``load`` waits (up to 60 s) until it exists: a model held loading."""
    exit_on_load: int | None = None
    """End the process with this status as the model loads (a worker that crashes at start)."""
    started: str | None = None
    """A file to append ``<pid> <row>`` to as each row's batch starts (warmup's excepted)."""
    record: str | None = None
    """A file to append every row that was computed and answered (one per line)."""
    complex_output: bool = False
    scale: float = 2.0
    """The output is ``scale * input + offset``: versions of a model that differ by a known amount."""
    offset: float = 0.0
    """Answer complex numbers, which JSON cannot encode: a backend that breaks the contract."""
    preprocess_ms: float = 0.0
    """How long ``preprocess`` takes per item (``slow-decode`` only)."""
    hold_until: str | None = None
    """A file: ``predict_batch`` waits (up to 30 s) until it exists."""
    holds: dict[str, str] = {}
    """Row (as text: ``"1"``) -> file: a batch holding that row waits (up to 30 s) until the file
    exists; so that one batch can be held while the next one is, or is not."""
    jitter: float = 0.0
    """Each batch's ``delay_ms`` times 1 + jitter x a uniform draw in [-1, 1): a service time with
    noise of a known size around a known mean (the capacity stays known)."""
    seed: int = 0
    """The jitter's random draws (seeded: the same noise every run)."""
    loads: str | None = None
    """A file to append a line to at each load: which load of the model this is, across processes."""
    slow_from_load: int | None = None
    """From this load on (counted in ``loads``), a batch takes ``later_delay_ms`` instead: a model
    that gets slower after a while, as when a neighbour arrives."""
    later_delay_ms: float = 0.0


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
        if self.options.load_until is not None:
            deadline = time.monotonic() + 60
            while not os.path.exists(self.options.load_until) and time.monotonic() < deadline:
                time.sleep(0.01)
        if self.options.exit_on_load is not None:
            os._exit(self.options.exit_on_load)
        if self.options.fail_load:
            LOADED[name] -= 1
            raise LoadError("told to fail at load")
        if self.options.fail_load_in_env is not None and self.options.fail_load_in_env in os.environ:
            LOADED[name] -= 1
            raise LoadError(f"told to fail at load where {self.options.fail_load_in_env} is set")
        self.calls: list[list[float]] = []
        self.random = random.Random(self.options.seed)
        self.load_number = 0
        if self.options.loads is not None:
            with open(self.options.loads, "a+", encoding="utf-8") as handle:
                handle.write(f"{os.getpid()}\n")
                handle.seek(0)
                self.load_number = len(handle.readlines())

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
        delay_ms = self.options.delay_ms
        if self.options.slow_from_load is not None and self.load_number >= self.options.slow_from_load:
            delay_ms = self.options.later_delay_ms
        if delay_ms and self.options.slow_on in (None, *rows):
            time.sleep(delay_ms * (1 + self.options.jitter * (2 * self.random.random() - 1)) / 1000)
        if self.options.record:
            with open(self.options.record, "a", encoding="utf-8") as handle:
                handle.writelines(f"{row}\n" for row in rows)
        if self.options.complex_output:
            return [complex(2 * row) for row in rows]
        return [self.options.scale * row + self.options.offset for row in rows]

    def describe(self) -> dict[str, Any]:
        return {"input": {"type": "number"}, "output": {"type": "number", "is": "scale * input + offset"},
                "copies_loaded": LOADED.get(self.config.name, 0)}


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


class SignOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    threshold: float = 0.0
    """``yes`` above it: two versions with different thresholds disagree on the rows between."""


class SignClassifier(Backend[list[float], dict[str, Any]]):
    """A classifier of rows of two numbers, of the ``FeatureRows`` kind (``batchserve.backends.kinds``)
    by its methods alone, a subclass of no built-in backend: ``yes`` when the sum is above the
    threshold (0)."""

    input_kind = "rows"
    Options = SignOptions

    def load(self, device: str) -> None:
        pass

    def warmup(self) -> None:
        self.predict_batch([[0.0, 0.0]])

    def preprocess(self, item: Any, parameters: Any) -> list[float]:
        if not isinstance(item, list) or len(item) != 2 or any(type(v) not in (int, float) for v in item):
            raise InvalidInput("expected a list of 2 numbers")
        return [float(v) for v in item]

    def predict_batch(self, rows: list[list[float]]) -> list[dict[str, Any]]:
        threshold = self.options.threshold
        return [{"label": "yes" if sum(row) > threshold else "no",
                 "scores": {"no": 0.25, "yes": 0.75} if sum(row) > threshold else {"no": 0.75, "yes": 0.25}}
                for row in rows]

    def describe(self) -> dict[str, Any]:
        return {"input": {"type": "array of 2 numbers"}, "output": {"type": "label and scores"}}

    def feature_count(self) -> int:
        return 2

    def class_labels(self) -> list[Any] | None:
        return ["no", "yes"]

    def outputs_per_row(self) -> int:
        return 1


class TextLengthEmbedder(Backend[str, Embedding]):
    """A sentence embedder of the ``SentenceEmbedder`` kind by its method alone, a subclass of no
    built-in backend: a text's vector is its length in characters, in words, and 1; its tokens
    are its words."""

    input_kind = "text"

    def load(self, device: str) -> None:
        pass

    def warmup(self) -> None:
        self.predict_batch(["warm up"])

    def parse_parameters(self, parameters: Mapping[str, Any]) -> Any:
        if set(parameters) - {"dimensions"} or parameters.get("dimensions", 3) != 3:
            raise InvalidInput("this model takes parameters.dimensions = 3 only")
        return None

    def preprocess(self, item: Any, parameters: Any) -> str:
        if not isinstance(item, str):
            raise InvalidInput(f"expected a string, got {type(item).__name__}")
        return item

    def predict_batch(self, rows: list[str]) -> list[Embedding]:
        return [Embedding([float(len(row)), float(len(row.split())), 1.0], len(row.split()))
                for row in rows]

    def describe(self) -> dict[str, Any]:
        return {"input": {"type": "string"}, "output": {"type": "array of 3 numbers"}}

    def vector_size(self) -> int:
        return 3
