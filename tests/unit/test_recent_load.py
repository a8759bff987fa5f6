"""``RecentLoad.placement``: which batches may run on the event loop. A size class is judged by
what its batches cost on the loop; the thread's time (inflated beside a busy loop on the same
cores) only decides whether one batch may try the loop."""

from __future__ import annotations

from batchserve import load
from batchserve.load import RecentLoad

ROWS = 5  # size class 3: the loop mean counts double


def _cheap(recent: RecentLoad) -> bool:
    return recent.placement(ROWS)[0] == "loop"


def _on_thread(recent: RecentLoad, cpu_s: float, batches: int) -> None:
    for _ in range(batches):
        recent.computed(ROWS, cpu_s)


def test_a_class_the_thread_measures_dear_still_tries_the_loop() -> None:
    """Beside a loop serving 64 connections, a diabetes batch took 100-200 us of the thread's
    CPU and ~50 us on the loop: judged by the thread's time, it would never have left it."""
    recent = RecentLoad()
    _on_thread(recent, 400e-6, load.INLINE_AFTER_BATCHES - 1)
    assert not _cheap(recent)  # too few measured
    _on_thread(recent, 400e-6, 1)
    assert _cheap(recent)  # one batch measures it on the loop
    recent.computed(ROWS, 40e-6, on_loop=True)
    assert _cheap(recent) and _cheap(recent)  # judged by the loop's 40 us from now on


def test_a_class_dear_on_the_loop_goes_back_to_the_thread_and_is_retried_later() -> None:
    recent = RecentLoad()
    _on_thread(recent, 400e-6, load.INLINE_AFTER_BATCHES)
    dear = 0.75 * load.INLINE_MAX_S  # doubled for the class: over INLINE_MAX_S
    recent.computed(ROWS, dear, on_loop=True)
    assert not _cheap(recent)
    _on_thread(recent, 400e-6, load.INLINE_REPROBE_BATCHES - 1)
    assert not _cheap(recent)
    _on_thread(recent, 400e-6, 1)
    assert _cheap(recent)  # tried again
    recent.computed(ROWS, dear, on_loop=True)
    assert not _cheap(recent)  # still dear: the next try is INLINE_REPROBE_BATCHES away


def test_a_class_too_dear_on_the_thread_never_tries_the_loop() -> None:
    recent = RecentLoad()
    _on_thread(recent, 2 * load.INLINE_LIMIT_S, load.INLINE_REPROBE_BATCHES * 2)
    assert not _cheap(recent)


def test_a_strike_is_not_taken_as_the_class_cost() -> None:
    recent = RecentLoad()
    _on_thread(recent, 100e-6, load.INLINE_AFTER_BATCHES)
    recent.computed(ROWS, 30e-6, on_loop=True)
    recent.computed(ROWS, 5e-3, on_loop=True)  # a strike (``held_loop``): the class stays cheap
    assert recent.loop_s[ROWS.bit_length()][0] == 30e-6
    assert recent.held_loop(5e-3) == load.INLINE_PAUSE_BATCHES and not _cheap(recent)


def test_each_placement_says_why() -> None:
    recent = RecentLoad()
    assert recent.placement(ROWS) == ("thread", "unmeasured")
    _on_thread(recent, 100e-6, load.INLINE_AFTER_BATCHES)
    assert recent.placement(ROWS) == ("loop", "probe")
    recent.computed(ROWS, 30e-6, on_loop=True)
    assert recent.placement(ROWS) == ("loop", "cheap")
    recent.held_loop(5e-3)
    assert recent.placement(ROWS) == ("thread", "paused")
    dear = RecentLoad()
    _on_thread(dear, 2 * load.INLINE_LIMIT_S, load.INLINE_AFTER_BATCHES)
    assert dear.placement(ROWS) == ("thread", "costly")
    assert {recent.placement(ROWS), dear.placement(ROWS)} <= set(load.PLACEMENTS)


def test_strikes_pause_the_loop_for_longer_each_time_but_never_for_good() -> None:
    recent = RecentLoad()
    pauses = [recent.held_loop(5e-3) for _ in range(12)]
    assert pauses[:3] == [load.INLINE_PAUSE_BATCHES, 2 * load.INLINE_PAUSE_BATCHES,
                          4 * load.INLINE_PAUSE_BATCHES]
    assert max(p or 0 for p in pauses) == load.INLINE_MAX_PAUSE_BATCHES
    recent.batches += load.INLINE_MAX_PAUSE_BATCHES  # the pause over: the loop is tried again
    _on_thread(recent, 100e-6, load.INLINE_AFTER_BATCHES)
    recent.computed(ROWS, 30e-6, on_loop=True)
    assert _cheap(recent)
    recent.batches += load.INLINE_FORGIVE_BATCHES  # long enough without a strike: a fresh start
    assert recent.held_loop(5e-3) == load.INLINE_PAUSE_BATCHES


def test_the_wait_counts_the_queue_at_the_best_rate_of_any_batch_size() -> None:
    """Small batches (low load) drain slower than full ones; a long queue drains at the full
    ones' rate, so admission predicts with the best (and refuses only what surely can't start)."""
    recent = RecentLoad()
    for _ in range(load.RATE_AFTER_BATCHES):
        recent.batch_ran(1, 0.01)  # 100 rows/s in batches of 1
        recent.batch_ran(64, 0.064)  # 1,000 rows/s in batches of 64
    assert recent.best_rate() == 1000.0
    assert recent.wait_s(500, 1, None) == 0.5
    assert recent.wait_s(500, 2, None) == 0.25
