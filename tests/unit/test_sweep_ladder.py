"""recommend's ladder of batch sizes: it stops at the first max_batch_size its ramp never filled,
since a larger cap serves every load the ramp measured the same way (``sweep.rows_waiting``)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from batchserve_planning.candidates import Candidate, Outcome, Variant
from batchserve_planning.load.progress import Bars
from batchserve_planning.ramp import RampSettings, Step
from batchserve_planning.sweep import Sweep, rows_waiting

SKLEARN = {"name": "m", "backend": "sklearn", "path": "d"}


def step(clients: int, rows_per_s: float) -> Step:
    return Step(concurrency=clients, rps=rows_per_s, rows_per_s=rows_per_s, p50_ms=10.0, p99_ms=50.0,
                max_ms=60.0, error_rate=0.0, mean_batch_size=1.0, within_slo=True, stages_ms={},
                rows_low=rows_per_s * 0.99, rows_high=rows_per_s * 1.01, p99_high=55.0, windows=3)


def outcome(size: int, most_clients: int, workers: int = 1) -> Outcome:
    """Steps of 1, 2, 4, ... clients up to ``most_clients``, larger batches a little faster."""
    clients = [1]
    while clients[-1] * 2 <= most_clients:
        clients.append(clients[-1] * 2)
    if clients[-1] != most_clients:
        clients.append(most_clients)
    return Outcome(Candidate(size, 0.0, workers, "cpu"), [step(c, 10.0 * c + size) for c in clients])


def test_a_cap_its_ramp_never_reached_is_where_larger_ones_serve_the_same() -> None:
    assert rows_waiting(outcome(8, 8), 1) == 8  # 8 clients of 1 row: a batch of 8 at most
    assert rows_waiting(outcome(8, 6), 1) == 6
    assert rows_waiting(outcome(4, 8), 1) is None  # 8 rows waiting: the cap of 4 split them
    assert rows_waiting(outcome(8, 8), 2) is None  # 8 clients of 2 rows: 16 waiting
    assert rows_waiting(Outcome(Candidate(8, 0.0, 1, "cpu")), 1) is None  # nothing measured


@pytest.mark.timeout(30)
def test_the_ladder_stops_there_and_the_search_goes_on_to_the_workers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = argparse.Namespace(config=tmp_path / "models.toml", server_cpus={0, 1}, max_batch_cap=64,
                              max_wait_ms="0", instances="1", workers="1,2", full_grid=False, budget_s=600.0)
    sweep = Sweep(args, SKLEARN, [], RampSettings(slo_ms=100.0), tmp_path, rerun=False)
    sweep.bars = Bars(enabled=False)
    most = {1: 4, 2: 8, 4: 8, 8: 8, 16: 8, 32: 8, 64: 8}  # the SLO ends each ramp by 8 clients
    evaluated: list[Candidate] = []

    def evaluate(candidate: Candidate) -> Outcome:
        evaluated.append(candidate)
        return outcome(candidate.max_batch_size, most[candidate.max_batch_size] * candidate.workers,
                       candidate.workers)

    monkeypatch.setattr(sweep, "evaluate", evaluate)
    monkeypatch.setattr(sweep, "threads_cores", lambda cores, combos: None)
    outcomes, skipped = sweep.search([Variant("cpu")])
    assert [(c.max_batch_size, c.workers) for c in evaluated] == [(1, 1), (2, 1), (4, 1), (8, 1), (8, 2)]
    assert skipped == [] and len(outcomes) == 5
    assert any(note.startswith("max_batch_size 16, 32, 64 not run: at max_batch_size 8 at most 8 rows")
               for note in sweep.notes), sweep.notes
