"""The open-loop peak search stops at its deadline (``recommend --hardware``'s budget counts it)."""

from __future__ import annotations

from typing import Any

import pytest
from batchserve_planning import openloop
from batchserve_planning.openloop import OpenStep, peak_rate


class Clock:
    """A monotonic clock that each fake step advances by ``step_s``."""

    def __init__(self, step_s: float) -> None:
        self.now = 1000.0
        self.step_s = step_s

    def monotonic(self) -> float:
        return self.now


def fake_steps(monkeypatch: pytest.MonkeyPatch, clock: Clock, limit_rps: float) -> list[float]:
    """measure_open replaced by a step within the SLO below ``limit_rps``; returns the rates tried."""
    tried: list[float] = []

    def measure_open(url: str, model: str, requests: Any, rate: float, settings: Any, bars: Any,
                     label: str, **_: Any) -> OpenStep:
        tried.append(rate)
        clock.now += clock.step_s
        within = rate <= limit_rps
        return OpenStep(rate, rate, rate, 1.0, 1.0 if within else 999.0, 0.0, 1.0, within, rate)

    monkeypatch.setattr(openloop, "measure_open", measure_open)
    return tried


def test_without_a_deadline_the_search_runs_to_its_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(step_s=10.0)
    tried = fake_steps(monkeypatch, clock, limit_rps=1000.0)
    peak = peak_rate("http://x", "m", None, None, 100.0, None, "peak",  # type: ignore[arg-type]
                     clock=clock.monotonic)
    assert len(tried) == 8 and peak.rate_rps is not None and not any("budget" in n for n in peak.notes)


def test_a_step_that_would_end_past_the_deadline_is_not_started(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(step_s=10.0)
    tried = fake_steps(monkeypatch, clock, limit_rps=1000.0)
    # Room for three 10 s steps: the fourth would end past the deadline.
    peak = peak_rate("http://x", "m", None, None, 100.0, None, "peak",  # type: ignore[arg-type]
                     deadline=clock.now + 35.0, clock=clock.monotonic)
    assert len(tried) == 3
    assert peak.rate_rps == tried[-1]
    assert any("budget" in note for note in peak.notes)


def test_the_first_step_is_always_measured(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(step_s=10.0)
    tried = fake_steps(monkeypatch, clock, limit_rps=1000.0)
    peak = peak_rate("http://x", "m", None, None, 100.0, None, "peak",  # type: ignore[arg-type]
                     deadline=clock.now - 1.0, clock=clock.monotonic)
    assert len(tried) == 1 and peak.rate_rps == 100.0
