"""Running one batch: the execution half of the batcher (``batcher.py`` forms the batches).

``run_batch`` runs on an executor thread and turns one call of ``predict_batch`` into one
outcome per row: the row's output, or a ``RowError`` for a row that failed alone.

- A backend that knows which rows failed returns ``RowError(error)`` in their place: the
  rest of the batch is answered and nothing is called again.
- An error that is not the rows' fault (out of memory, a lost device, a ``BackendError`` the
  backend raised, a broken contract) fails the whole batch once (``BatchFailed``), logged
  once; calling again on halves of the batch would only repeat it.
- Any other exception is unexpected: the batch is bisected to isolate the rows that raise,
  within ``bisection_budget`` extra calls; rows still not isolated then fail together.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from batchserve.errors import BackendContractError, BackendError, BatchserveError, RowError

log = logging.getLogger(__name__)

PredictBatch = Callable[[list[Any]], Sequence[Any]]
Disconnected = Callable[[], Awaitable[object]]
"""What makes an awaitable that completes once a request's client has gone away (made only when
a watch starts: a task per request costs more than a small model's row)."""

_DEVICE_MARKERS = ("CUDA", "cuDNN", "CUBLAS", "out of memory", "can't allocate memory", "device-side")


@dataclass(eq=False, slots=True)
class Request:
    """One admitted request: its rows, where they stand, and the future its caller awaits."""

    rows: Sequence[Any]
    deadline_s: float  # on the time.monotonic() clock
    enqueued_s: float
    future: asyncio.Future[list[Any]]
    outputs: list[Any]
    unanswered: int  # rows whose outputs have not arrived yet
    next_row: int = 0  # first row not yet dispatched
    done: bool = False  # answered, failed, expired or abandoned
    dispatched_s: float = 0.0  # when its first row went in a batch (time.monotonic())
    computed_s: float = 0.0  # when the latest batch holding its rows ended
    check_s: float = 0.0  # when the batcher's InFlight next looks at it (inflight.py)
    disconnected: Disconnected | None = None  # makes the watch's awaitable
    watcher: asyncio.Future[object] | None = None  # waits for the client to disconnect
    span: Any = None  # its caller's trace span, when traced (tracing.py)
    batch_spans: list[Any] | None = None  # the spans of the batches that ran it, when traced


@dataclass(slots=True)
class Batch:
    rows: list[Any] = field(default_factory=list)
    slices: list[tuple[Request, int, int]] = field(default_factory=list)
    taken_s: float = 0.0  # when it was taken from the queue (time.monotonic())


class Fail(Protocol):
    """How a request is failed: the batcher's ``_fail``."""

    def __call__(self, request: Request, error: BatchserveError | None, *, reason: str | None) -> None:
        ...


class BatchFailed(Exception):
    """The whole batch failed for a reason that is not its rows' fault; already logged."""

    def __init__(self, error: BatchserveError) -> None:
        super().__init__(error.message)
        self.error = error


def not_the_rows_fault(exc: BaseException) -> bool:
    """Out of memory, a lost or failing device, or the backend saying so (``BackendError``):
    every sub-batch would fail the same way, so bisecting would only multiply the calls.
    torch's errors are recognised by name and message, so torch need not be imported."""
    if isinstance(exc, BackendError | MemoryError):
        return True
    if type(exc).__name__ in ("OutOfMemoryError", "AcceleratorError"):
        return True  # torch.cuda.OutOfMemoryError, torch.AcceleratorError
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in _DEVICE_MARKERS)


def bisection_budget(rows: int) -> int:
    """Extra calls allowed to isolate failing rows: enough to find one bad row among ``rows``
    (two calls per halving), so a batch costs at most ~2 log2(N) calls, never 2N - 1."""
    return 2 * (rows - 1).bit_length()


def run_batch(predict: PredictBatch, rows: list[Any], model: str) -> list[Any]:
    """One outcome per row (an output or a ``RowError``); raises ``BatchFailed``."""
    try:
        outputs = predict(rows)
    except Exception as exc:
        if not_the_rows_fault(exc):
            raise _batch_failed(exc, model, len(rows)) from exc
        budget = bisection_budget(len(rows))
        if len(rows) > 1:
            log.warning("model %s: predict_batch raised %s on a batch of %d rows; isolating the "
                        "failing rows in at most %d more calls", model, type(exc).__name__,
                        len(rows), budget, exc_info=exc)
        elif not isinstance(exc, BatchserveError):
            log.error("model %s: predict_batch raised on a row", model, exc_info=exc)
        return _Bisection(predict, model, budget).isolate(rows, exc)
    return _checked(predict, outputs, rows, model)


def timed_run_batch(predict: PredictBatch, rows: list[Any], model: str) -> tuple[list[Any], float]:
    """``run_batch``'s outcomes, and the CPU seconds its thread spent on it (no hop, no wait, no
    preemption: what running it on the event loop would cost)."""
    started = time.thread_time()
    outcomes = run_batch(predict, rows, model)
    return outcomes, time.thread_time() - started


@dataclass(slots=True)
class _Bisection:
    predict: PredictBatch
    model: str
    left: int  # extra calls still allowed

    def isolate(self, rows: list[Any], exc: Exception) -> list[Any]:
        """Outcomes of ``rows``, on which ``predict`` raised ``exc`` as a whole."""
        if len(rows) == 1:
            return [RowError(exc if isinstance(exc, BatchserveError) else BackendError(
                f"model '{self.model}' failed: {type(exc).__name__}"))]
        if self.left < 2:
            error = BackendError(
                f"model '{self.model}' failed on a batch of {len(rows)} rows holding this one "
                f"({type(exc).__name__}); the failing rows were not isolated")
            return [RowError(error)] * len(rows)
        middle = len(rows) // 2
        outcomes: list[Any] = []
        for half in (rows[:middle], rows[middle:]):
            self.left -= 1
            try:
                outputs = self.predict(half)
            except Exception as inner:
                if not_the_rows_fault(inner):
                    raise _batch_failed(inner, self.model, len(half)) from inner
                outcomes.extend(self.isolate(half, inner))
            else:
                outcomes.extend(_checked(self.predict, outputs, half, self.model))
        return outcomes


def _checked(predict: PredictBatch, outputs: Sequence[Any], rows: list[Any], model: str) -> list[Any]:
    if len(outputs) != len(rows):
        backend = getattr(predict, "__qualname__", type(predict).__qualname__)
        error = BackendContractError(
            f"{backend} (model '{model}') returned {len(outputs)} outputs for "
            f"{len(rows)} rows; predict_batch must return exactly one output per row")
        log.error("model %s: %s", model, error.message)
        raise BatchFailed(error)
    return list(outputs)


def _batch_failed(exc: Exception, model: str, rows: int) -> BatchFailed:
    log.error("model %s: a batch of %d rows failed, not for its rows: %s", model, rows,
              type(exc).__name__, exc_info=exc)
    if isinstance(exc, BatchserveError):
        return BatchFailed(exc)
    return BatchFailed(BackendError(f"model '{model}' failed on this batch: {type(exc).__name__}"))


def settle(future: asyncio.Future[list[Any]], outcome: list[Any] | BaseException) -> None:
    """Answer ``future`` unless its caller is already gone (cancelled): a caller's state must
    never raise out of a worker loop."""
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def row_failure(outcome: RowError, index: int, model: str) -> BatchserveError:
    """The error a request gets for its item ``index``, which failed as ``outcome``."""
    error = outcome.error
    if not isinstance(error, BatchserveError):  # a backend that broke the contract
        error = BackendContractError(f"model '{model}': RowError must hold a BatchserveError, "
                                     f"not {type(error).__name__}")
    return for_item(error, index)


def for_item(error: BatchserveError, index: int) -> BatchserveError:
    """The same error, its message naming the request's item."""
    named = BatchserveError.__new__(type(error))
    BatchserveError.__init__(named, f"item {index}: {error.message}", headers=dict(error.headers))
    return named


def deliver(batch: Batch, outcomes: list[Any], fail: Fail, answered: Callable[[Request], None],
            model: str, computed_s: float) -> None:
    """Hand a batch's outcomes, one per row, to its requests: a request whose rows have all run
    is answered (then ``answered``: the batcher stops watching it); a row's error fails its
    request (``fail``: the batcher's). The batch ended at ``computed_s``."""
    offset = 0
    for request, start, stop in batch.slices:
        request.computed_s = computed_s
        part = outcomes[offset : offset + stop - start]
        offset += stop - start
        if request.done or request.future.done():
            # Cancelled in this loop turn (its caller's task was cancelled and has not run
            # its cleanup yet): nobody waits for these outputs.
            fail(request, None, reason="cancelled")
            continue
        for index, outcome in enumerate(part, start):
            if isinstance(outcome, RowError):
                fail(request, row_failure(outcome, index, model), reason=None)
                break
            request.outputs[index] = outcome
        else:
            request.unanswered -= stop - start
            if request.unanswered == 0:
                request.done = True
                answered(request)
                settle(request.future, request.outputs)
