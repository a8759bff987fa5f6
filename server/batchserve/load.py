"""What a batcher knows of its recent traffic and speed: running means it decides by."""

from __future__ import annotations

from dataclasses import dataclass, field

GAP_WEIGHT = 0.25  # weight of the newest inter-arrival gap in its running mean
BATCH_WEIGHT = 0.25  # weight of the newest batch in the running means of duration and rate
RATE_AFTER_BATCHES = 4  # no rate is claimed from fewer batches (the first ones can be slow)
INLINE_MAX_S = 0.0004
"""A batch whose predict_batch is expected to take less than this runs on the event loop itself
(``Batcher``), saving the hop to the model's thread and back (a submit, two thread wake-ups and
the GIL handed over twice: tens of us of CPU, and the thread's caches cold after each switch).
The loop may be held ~1 ms at most: a class's mean counts double (its sizes vary 2x), which
leaves a 25% margin below ``INLINE_LIMIT_S``."""
INLINE_AFTER_BATCHES = 4  # batches of a size class measured before its cost is trusted
INLINE_REPROBE_BATCHES = 256
"""A size class measured too dear on the loop is tried there again after this many batches on
the thread (its cost may have fallen: a model's batches cost more while it warms up)."""
INLINE_LIMIT_S = 0.001
"""A batch that held the event loop longer than this (CPU time) is a strike: its model's batches
run on its thread for the next ``INLINE_PAUSE_BATCHES``, doubling with each strike in a row up to
``INLINE_MAX_PAUSE_BATCHES``. Never for good: a strike may be the loop's thread collecting garbage
inside the call, or a noisy neighbour, and ``INLINE_FORGIVE_BATCHES`` batches without one clear
the count."""
INLINE_PAUSE_BATCHES = 256
INLINE_MAX_PAUSE_BATCHES = 4096
INLINE_FORGIVE_BATCHES = 8192

PLACEMENTS = (("loop", "cheap"), ("loop", "probe"), ("thread", "costly"), ("thread", "paused"),
              ("thread", "unmeasured"), ("thread", "backend"))
"""Where a batch ran and why (``batchserve_batch_placement_total{place, reason}``): on the event
loop because its size class is cheap there, or to measure it there (probe); on the model's thread
because the class costs too much for the loop, because a recent batch held the loop too long
(paused), because too few batches were measured yet, or because the backend (or its instance
count) does not allow the loop."""


def _mean(previous: float | None, value: float, weight: float) -> float:
    """An exponentially weighted moving average; the first value starts it."""
    return value if previous is None else previous + weight * (value - previous)


@dataclass(slots=True)
class RecentLoad:
    gap_s: float | None = None
    """Mean gap between arrivals; ``None`` until two requests arrived."""
    batch_s: float = 0.0
    """Mean time per batch: a row with less time left than this can't make its deadline."""
    rates: dict[int, float] = field(default_factory=dict)
    """Mean rows/s of one instance, by batch-size class (the size's bit length)."""
    batches: int = 0
    loop_strikes: int = 0
    """Batches in a row (none ``INLINE_FORGIVE_BATCHES`` apart) that held the event loop past
    ``INLINE_LIMIT_S``."""
    last_strike: int = 0
    """The count of ``batches`` at the latest strike."""
    loop_paused_until: int = 0
    """The count of ``batches`` before which no batch runs on the event loop (after a strike)."""
    compute_s: dict[int, tuple[float, int]] = field(default_factory=dict)
    """Mean CPU time of predict_batch itself on the model's thread, and the batches measured, by
    batch-size class. Only a bound for the loop's decision: beside a busy event loop on the same
    cores the thread's time ran 2-4x what the same batch takes on the loop (its caches are
    cold after every switch, and taking the GIL back costs), so a class is judged by ``loop_s``."""
    loop_s: dict[int, tuple[float, int]] = field(default_factory=dict)
    """The mean of the batches that ran on the event loop (what a batch of the class holds it),
    and the class's count of thread batches when one last ran there (to space out re-tries)."""
    best: float | None = None
    """The best of ``rates`` once ``RATE_AFTER_BATCHES`` ran (``best_rate``), kept as batches end
    so that admission reads it, not works it out, per request."""
    _last_arrival_s: float | None = None

    def arrived(self, now_s: float) -> None:
        last_s, self._last_arrival_s = self._last_arrival_s, now_s
        if last_s is not None:
            gap_s = self.gap_s
            self.gap_s = now_s - last_s if gap_s is None else gap_s + GAP_WEIGHT * (now_s - last_s - gap_s)

    def company_expected(self, max_wait_s: float) -> bool:
        """Requests arrive faster than ``max_wait_s`` apart: waiting for company pays."""
        return self.gap_s is not None and self.gap_s < max_wait_s

    def batch_ran(self, rows: int, elapsed_s: float) -> None:
        self.batch_s += BATCH_WEIGHT * (elapsed_s - self.batch_s)
        self.batches += 1
        if elapsed_s > 0 and rows > 0:
            # By size class, so that small batches (low load) don't hide the rate that full
            # ones reach, which is the rate a long queue drains at.
            size_class = rows.bit_length()
            self.rates[size_class] = _mean(self.rates.get(size_class), rows / elapsed_s, BATCH_WEIGHT)
        if self.batches >= RATE_AFTER_BATCHES and self.rates:
            self.best = max(self.rates.values())

    def computed(self, rows: int, elapsed_s: float, *, on_loop: bool = False) -> None:
        """predict_batch took ``elapsed_s`` of CPU on ``rows`` rows (timed around the call alone),
        on the event loop or on the model's thread. A batch on the loop past ``INLINE_LIMIT_S``
        is a strike (``held_loop``), not a measure of the class."""
        size_class = rows.bit_length()
        mean, count = self.compute_s.get(size_class, (None, 0))
        if not on_loop:
            self.compute_s[size_class] = (_mean(mean, elapsed_s, BATCH_WEIGHT), count + 1)
        elif elapsed_s <= INLINE_LIMIT_S:
            previous = self.loop_s.get(size_class, (None, 0))[0]
            self.loop_s[size_class] = (_mean(previous, elapsed_s, BATCH_WEIGHT), count)

    def placement(self, rows: int) -> tuple[str, str]:
        """Where a batch of ``rows`` rows runs, and why (one of ``PLACEMENTS``): on the event
        loop when its size class (sizes within 2x: the mean counts double, but for single rows)
        ran there in under ``INLINE_MAX_S``; or when it has not run there yet (or not for
        ``INLINE_REPROBE_BATCHES`` batches) and took under ``INLINE_LIMIT_S`` on the thread in
        ``INLINE_AFTER_BATCHES`` batches: then this batch measures it there (probe). On the
        thread while a strike's pause lasts."""
        if self.batches < self.loop_paused_until:
            return "thread", "paused"
        size_class = rows.bit_length()
        on_thread, thread_batches = self.compute_s.get(size_class, (0.0, 0))
        if thread_batches < INLINE_AFTER_BATCHES and size_class not in self.loop_s:
            return "thread", "unmeasured"
        probe = thread_batches >= INLINE_AFTER_BATCHES and on_thread < INLINE_LIMIT_S
        measured = self.loop_s.get(size_class)
        if measured is None:
            return ("loop", "probe") if probe else ("thread", "costly")
        on_loop, thread_batches_then = measured
        if on_loop * min(size_class, 2) < INLINE_MAX_S:
            return "loop", "cheap"
        if probe and thread_batches - thread_batches_then >= INLINE_REPROBE_BATCHES:
            return "loop", "probe"
        return "thread", "costly"

    def held_loop(self, cpu_s: float) -> int | None:
        """A batch on the event loop took ``cpu_s`` of its CPU: past ``INLINE_LIMIT_S`` it is a
        strike, and the answer is how many batches now go to the thread."""
        if self.loop_strikes and self.batches - self.last_strike >= INLINE_FORGIVE_BATCHES:
            self.loop_strikes = 0  # long enough without one: a fresh start
        if cpu_s <= INLINE_LIMIT_S:
            return None
        self.loop_strikes += 1
        self.last_strike = self.batches
        paused = min(INLINE_PAUSE_BATCHES << (self.loop_strikes - 1), INLINE_MAX_PAUSE_BATCHES)
        self.loop_paused_until = self.batches + paused
        return paused

    def best_rate(self) -> float | None:
        """The best recent rows/s of one instance; ``None`` until ``RATE_AFTER_BATCHES`` ran."""
        return self.best

    def wait_s(self, queued_rows: int, instances: int, ahead: Backlog | None) -> float | None:
        """Until a request arriving now could have its rows start: the ``queued_rows`` and those
        being preprocessed ahead of it at the model's best recent rate (optimistic: it refuses
        only what surely can't start in time), or its own preprocessing's wait (``ahead``),
        whichever is longer; ``None`` before a few batches ran (cold start), 0 with nothing ahead."""
        if ahead is None:
            ahead_s = 0.0
        else:
            queued_rows += ahead.rows
            ahead_s = ahead.wait_s()
        if not queued_rows:
            return ahead_s
        rate = self.best
        return None if rate is None else max(ahead_s, queued_rows / (instances * rate))


BACKLOG_AFTER_ITEMS = 4  # no preprocessing time is claimed from fewer items measured


@dataclass(slots=True)
class Backlog:
    """One model's heavy preprocessing (``preprocessing.OffLoop``): the items of the requests
    waiting for a slot or in one, and how long a slot takes per item (a running mean), so that
    admission sees the rows that are coming as well as those queued (``Batcher.check_admission``)."""

    slots: int = 1
    rows: int = 0
    """Items admitted to preprocessing whose rows are not queued yet."""
    item_s: float | None = None
    """Mean seconds a slot spends on one item; ``None`` until measured."""
    items_measured: int = 0

    def preprocessed(self, items: int, elapsed_s: float) -> None:
        if items > 0:
            self.item_s = _mean(self.item_s, elapsed_s / items, BATCH_WEIGHT)
            self.items_measured += items

    def wait_s(self) -> float:
        """How long until the items ahead, and a request's first item after them, are
        preprocessed; 0 until ``BACKLOG_AFTER_ITEMS`` were measured."""
        if self.item_s is None or self.items_measured < BACKLOG_AFTER_ITEMS:
            return 0.0
        return (self.rows / self.slots + 1) * self.item_s
