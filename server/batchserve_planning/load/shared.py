"""What the load generator and its workers share: the spec, the records, the slots.

A leaf module (the standard library only), so that ``generator`` and ``worker``
both import it and not each other. The slots are a flat array of floats that
every worker process sees (``multiprocessing.RawArray``, or a list in one
process): the start time, the stop time, then per worker its responses and
errors to requests sent while measuring.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

TICK_S = 0.02
"""How often a worker checks its stop condition, timeouts and progress."""

START, STOP = 0, 1
"""Slots: ``time.monotonic()`` when sending starts (0: not yet), and when it stops (0: not yet)."""
_PER_WORKER = 2


def slot_count(processes: int) -> int:
    """Slots for ``processes`` workers."""
    return _PER_WORKER + 2 * processes


def responses_slot(worker: int) -> int:
    """Slot of worker ``worker``'s responses to requests sent while measuring."""
    return _PER_WORKER + 2 * worker


def errors_slot(worker: int) -> int:
    """Slot of worker ``worker``'s non-2xx answers among those responses."""
    return _PER_WORKER + 2 * worker + 1


def total_responses(slots: Sequence[float], processes: int) -> float:
    return sum(slots[responses_slot(k)] for k in range(processes))


def total_errors(slots: Sequence[float], processes: int) -> float:
    return sum(slots[errors_slot(k)] for k in range(processes))


@dataclass(frozen=True)
class LoadSpec:
    """What load to generate against which server."""

    host: str
    port: int
    requests: tuple[bytes, ...]
    """Pre-built HTTP requests (``client.build_request``), or gRPC messages, sent in turn."""
    mode: Literal["closed", "open"] = "closed"
    concurrency: int = 1
    """Closed loop: concurrent clients. Open loop: most connections in use at once."""
    rate: float = 0.0
    """Open loop: mean arrivals per second."""
    duration_s: float | None = 10.0
    count: int | None = None
    """Measure this many requests instead of a duration."""
    warmup_s: float = 1.0
    timeout_s: float = 30.0
    min_responses: int = 0
    """Measure past ``duration_s`` until this many responses arrived..."""
    max_duration_s: float | None = None
    """... but no longer than this."""
    seed: int = 0
    protocol: Literal["http", "grpc"] = "http"
    """``grpc``: ``requests`` are serialized ``ModelInferRequest``s for the gRPC port at ``port``
    (``grpc_client.py``)."""


@dataclass
class Records:
    """Every request one worker made: times are ``time.monotonic()`` seconds."""

    intended: array[float] = field(default_factory=lambda: array("d"))
    sent: array[float] = field(default_factory=lambda: array("d"))
    end: array[float] = field(default_factory=lambda: array("d"))
    status: array[int] = field(default_factory=lambda: array("H"))
    error_examples: dict[int, bytes] = field(default_factory=dict)
    max_backlog: int = 0

    def add(self, intended: float, sent: float, end: float, status: int) -> None:
        self.intended.append(intended)
        self.sent.append(sent)
        self.end.append(end)
        self.status.append(status)

    def extend(self, other: Records) -> None:
        for mine, theirs in ((self.intended, other.intended), (self.sent, other.sent),
                             (self.end, other.end)):
            mine.extend(theirs)
        self.status.extend(other.status)
        for status, body in other.error_examples.items():
            self.error_examples.setdefault(status, body)
        self.max_backlog = max(self.max_backlog, other.max_backlog)
