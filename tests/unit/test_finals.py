"""Which finalists run side by side, measured in turn (``batchserve_planning/finals.py``)."""

from __future__ import annotations

import pytest
from batchserve_planning import finals
from batchserve_planning.candidates import Candidate, Outcome


def test_cpu_finalists_that_fit_together_run_side_by_side(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(finals, "available_bytes", lambda: 8 << 30)
    small = [Outcome(Candidate(8, 0.0, 1), peak_rss_bytes=1 << 30),
             Outcome(Candidate(16, 0.0, 1, workers=2), peak_rss_bytes=2 << 30)]
    assert finals.side_by_side(small)
    # together over half of what is free: one after the other
    large = [Outcome(Candidate(8, 0.0, 1), peak_rss_bytes=2 << 30),
             Outcome(Candidate(16, 0.0, 1, workers=2), peak_rss_bytes=3 << 30)]
    assert not finals.side_by_side(large)
    # a GPU's memory may hold one copy of the model: never two at once
    gpu = [Outcome(Candidate(8, 0.0, 1, device="cuda"), peak_rss_bytes=1 << 20),
           Outcome(Candidate(16, 0.0, 1, device="cuda"), peak_rss_bytes=1 << 20)]
    assert not finals.side_by_side(gpu)


def test_free_memory_is_read_from_the_kernel() -> None:
    assert finals.available_bytes() > 0
