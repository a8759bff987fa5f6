"""What a batcher knows of its recent traffic and speed: running means it decides by."""

from __future__ import annotations

from dataclasses import dataclass, field

GAP_WEIGHT = 0.25  # weight of the newest inter-arrival gap in its running mean
BATCH_WEIGHT = 0.25  # weight of the newest batch in the running means of duration and rate
RATE_AFTER_BATCHES = 4  # no rate is claimed from fewer batches (the first ones can be slow)
INLINE_MAX_S = 0.0002
"""A batch whose predict_batch is expected to take less than this runs on the event loop itself
(``Batcher``): the hop to the model's thread and back (two thread wake-ups) costs more than that
on a busy machine, and the loop may be held ~1 ms at most, so there is a 5x margin."""
INLINE_AFTER_BATCHES = 4  # batches of a size class measured before its cost is trusted
INLINE_LIMIT_S = 0.001
"""A batch that held the event loop longer than this (CPU time) is a strike: its model's batches
run on its thread for the next ``INLINE_PAUSE_BATCHES`` (doubling with each strike), and after
``INLINE_STRIKES`` never on the loop again: a backend whose cost is that unpredictable is not
cheap. One strike alone may be the loop's thread collecting garbage inside the call."""
INLINE_PAUSE_BATCHES = 256
INLINE_STRIKES = 3


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
    """Batches that held the event loop past ``INLINE_LIMIT_S``."""
    loop_paused: int = 0
    """Batches still to run on the model's thread before the loop is tried again."""
    compute_s: dict[int, tuple[float, int]] = field(default_factory=dict)
    """Mean CPU time of predict_batch itself (no thread hop, no waiting), and the batches measured,
    by batch-size class: what running a batch of that class on the event loop would hold it."""
    _last_arrival_s: float | None = None

    def arrived(self, now_s: float) -> None:
        if self._last_arrival_s is not None:
            self.gap_s = _mean(self.gap_s, now_s - self._last_arrival_s, GAP_WEIGHT)
        self._last_arrival_s = now_s

    def company_expected(self, max_wait_s: float) -> bool:
        """Requests arrive faster than ``max_wait_s`` apart: waiting for company pays."""
        return self.gap_s is not None and self.gap_s < max_wait_s

    def batch_ran(self, rows: int, elapsed_s: float) -> None:
        self.loop_paused = max(0, self.loop_paused - 1)
        self.batch_s += BATCH_WEIGHT * (elapsed_s - self.batch_s)
        self.batches += 1
        if elapsed_s > 0 and rows > 0:
            # By size class, so that small batches (low load) don't hide the rate that full
            # ones reach, which is the rate a long queue drains at.
            size_class = rows.bit_length()
            self.rates[size_class] = _mean(self.rates.get(size_class), rows / elapsed_s, BATCH_WEIGHT)

    def computed(self, rows: int, elapsed_s: float) -> None:
        """predict_batch took ``elapsed_s`` of CPU on ``rows`` rows (timed around the call alone)."""
        size_class = rows.bit_length()
        mean, count = self.compute_s.get(size_class, (None, 0))
        self.compute_s[size_class] = (_mean(mean, elapsed_s, BATCH_WEIGHT), count + 1)

    def cheap(self, rows: int) -> bool:
        """A batch of ``rows`` rows is expected to take less than ``INLINE_MAX_S``, measured on
        ``INLINE_AFTER_BATCHES`` batches of its size class (whose sizes are within 2x: the mean
        counts double, but for single rows)."""
        if self.loop_paused or self.loop_strikes >= INLINE_STRIKES:
            return False
        size_class = rows.bit_length()
        mean, count = self.compute_s.get(size_class, (0.0, 0))
        return count >= INLINE_AFTER_BATCHES and mean * min(size_class, 2) < INLINE_MAX_S

    def held_loop(self, cpu_s: float) -> int | None:
        """A batch on the event loop took ``cpu_s`` of its CPU: past ``INLINE_LIMIT_S`` it is a
        strike, and the answer is how many batches now go to the thread (0: for good)."""
        if cpu_s <= INLINE_LIMIT_S:
            return None
        self.loop_strikes += 1
        if self.loop_strikes >= INLINE_STRIKES:
            return 0
        self.loop_paused = INLINE_PAUSE_BATCHES << (self.loop_strikes - 1)
        return self.loop_paused

    def best_rate(self) -> float | None:
        """The best recent rows/s of one instance; ``None`` until ``RATE_AFTER_BATCHES`` ran."""
        if self.batches < RATE_AFTER_BATCHES or not self.rates:
            return None
        return max(self.rates.values())
