"""recommend's ladder of batch sizes (``ladder``): it stops at the first max_batch_size its ramp
never filled, since a larger cap serves every load the ramp measured the same way
(``rows_waiting``), and after two sizes in a row that carried no more than the last that grew,
beyond their noise (the surface has flattened); the workers come first, at the configured size."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import pytest
from batchserve_planning.candidates import Candidate, Outcome, Variant
from batchserve_planning.choices import simplest
from batchserve_planning.ladder import rows_waiting
from batchserve_planning.load.progress import Bars
from batchserve_planning.ramp import RampSettings, Step
from batchserve_planning.sweep import Sweep

SKLEARN = {"name": "m", "backend": "sklearn", "path": "d"}


def step(clients: int, rows_per_s: float, spread: float = 0.01, within_slo: bool = True,
         settled: bool = True) -> Step:
    return Step(concurrency=clients, rps=rows_per_s, rows_per_s=rows_per_s, p50_ms=10.0, p99_ms=50.0,
                max_ms=60.0, error_rate=0.0, mean_batch_size=1.0, within_slo=within_slo, stages_ms={},
                rows_low=rows_per_s * (1 - spread), rows_high=rows_per_s * (1 + spread), p99_high=55.0,
                windows=3, settled=settled)


def outcome(size: int, most_clients: int, workers: int = 1) -> Outcome:
    """Steps of 1, 2, 4, ... clients up to ``most_clients``, larger batches faster."""
    clients = [1]
    while clients[-1] * 2 <= most_clients:
        clients.append(clients[-1] * 2)
    if clients[-1] != most_clients:
        clients.append(most_clients)
    return Outcome(Candidate(size, 0.0, 1, "cpu", workers=workers),
                   [step(c, 10.0 * c * (1 + 0.1 * size)) for c in clients])


def sweep_of(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, measure: Callable[[Candidate], Outcome],
             evaluated: list[Candidate]) -> Sweep:
    """A search of 1 and 2 workers at the configured batch (32: none configured), then batch 1-64,
    whose candidates are ``measure``d (and listed in ``evaluated``) instead of served."""
    args = argparse.Namespace(config=tmp_path / "models.toml", server_cpus={0, 1}, max_batch_cap=64,
                              max_wait_ms="0", instances="1", workers="1,2", full_grid=False, budget_s=600.0)
    sweep = Sweep(args, SKLEARN, [], RampSettings(slo_ms=100.0), tmp_path, rerun=False)
    sweep.bars = Bars(enabled=False)

    def evaluate(candidate: Candidate) -> Outcome:
        evaluated.append(candidate)
        return measure(candidate)

    monkeypatch.setattr(sweep, "evaluate", evaluate)
    monkeypatch.setattr(sweep, "threads_cores", lambda cores, combos: None)
    return sweep


def test_a_cap_its_ramp_never_reached_is_where_larger_ones_serve_the_same() -> None:
    assert rows_waiting(outcome(8, 8), 1) == 8  # 8 clients of 1 row: a batch of 8 at most
    assert rows_waiting(outcome(8, 6), 1) == 6
    assert rows_waiting(outcome(4, 8), 1) is None  # 8 rows waiting: the cap of 4 split them
    assert rows_waiting(outcome(8, 8), 2) is None  # 8 clients of 2 rows: 16 waiting
    assert rows_waiting(Outcome(Candidate(8, 0.0, 1, "cpu")), 1) is None  # nothing measured


@pytest.mark.timeout(30)
def test_sizes_a_ramp_never_filled_are_not_run_either_way(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    most = {1: 4, 2: 8, 4: 8, 8: 8, 16: 8, 32: 8, 64: 8}  # the SLO ends each ramp by 8 clients
    evaluated: list[Candidate] = []
    sweep = sweep_of(tmp_path, monkeypatch, lambda c: outcome(
        c.max_batch_size, most[c.max_batch_size] * c.workers, c.workers), evaluated)
    outcomes, skipped = sweep.search([Variant("cpu")])
    # 2 workers carry more at batch 32 (16 clients within the SLO, one worker 8): the ladder runs
    # with them. Its ramp never had more than 16 rows waiting: 64 and 16 would serve it the same
    # way. 8 carries less beyond the noise, so 4, 2 and 1 are not run either.
    assert [(c.max_batch_size, c.workers) for c in evaluated] == [(32, 1), (32, 2), (8, 2)]
    assert skipped == [] and len(outcomes) == 3
    for note in ("max_batch_size 64 not run: at max_batch_size 32 at most 16 rows",
                 "max_batch_size 16 not run: at max_batch_size 32 at most 16 rows were ever waiting, so a "
                 "cap down to 16 would change no batch at any load measured either",
                 "max_batch_size 1, 2, 4 not run: max_batch_size 8 carried less than max_batch_size 32's "
                 "672/s beyond their measured noise"):
        assert any(n.startswith(note) for n in sweep.notes), (note, sweep.notes)


# Each ramp filled its cap (128 clients): only the figures can stop the ladder.
FILLED = 128


def curve(figures: dict[int, float], spread: float,
          unsettled: dict[int, float] | None = None) -> Callable[[Candidate], Outcome]:
    """A candidate's ramp: one step at ``FILLED`` clients carrying ``figures[max_batch_size]``
    (2 workers: 1.8x), known to within ``spread`` either way, or within ``unsettled[size]`` with
    windows that did not agree; a size missing from ``figures`` has no step within the SLO."""
    def measure(c: Candidate) -> Outcome:
        rows = figures.get(c.max_batch_size)
        if rows is None:
            return Outcome(c, [step(FILLED, 50.0, spread, within_slo=False)])
        wide = (unsettled or {}).get(c.max_batch_size)
        return Outcome(c, [step(FILLED, rows * (1.8 if c.workers == 2 else 1.0), wide or spread,
                                settled=wide is None)])
    return measure


@pytest.mark.timeout(30)
def test_a_ladder_that_has_flattened_stops_and_the_workers_get_the_budget(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # diabetes on the 2-core VM: batch 8 and up within each other's noise; batch 2's and 4's
    # windows did not agree (batch 2's spread 8,000-11,200/s), so their being within batch 1's
    # noise does not count
    figures = {1: 8_000.0, 2: 9_100.0, 4: 10_500.0, 8: 22_000.0, 16: 22_500.0, 32: 23_000.0,
               64: 22_800.0}
    evaluated: list[Candidate] = []
    sweep = sweep_of(tmp_path, monkeypatch, curve(figures, 0.04, unsettled={2: 0.18, 4: 0.25}), evaluated)
    sweep.search([Variant("cpu")])
    # 2 workers first, at batch 32 (1.8x); then the ladder with them: up to 64, then down while
    # the smaller sizes carry as much within the noise: 16 and 8 do, 4 does not (its windows
    # spread 25%, but even their top is below batch 32's noise), so 2 and 1 are not run
    ran = [(c.max_batch_size, c.workers) for c in evaluated]
    assert ran == [(32, 1), (32, 2), (64, 2), (16, 2), (8, 2), (4, 2)]
    assert any(note.startswith("max_batch_size 1, 2 not run: max_batch_size 4 carried less than "
                               "max_batch_size 32's 41,400/s beyond their measured noise")
               for note in sweep.notes), sweep.notes


@pytest.mark.timeout(30)
def test_a_noisy_ladder_that_still_grows_beyond_its_noise_runs_to_its_cap(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    figures = {1: 100.0, 2: 130.0, 4: 170.0, 8: 220.0, 16: 290.0, 32: 380.0, 64: 500.0}  # +30% a step
    evaluated: list[Candidate] = []
    sweep = sweep_of(tmp_path, monkeypatch, curve(figures, 0.10), evaluated)  # known to 10% either way
    sweep.search([Variant("cpu")])
    # up from the configured 32 to the cap, 64: it grows beyond the noise; down, 16 carries less
    assert [(c.max_batch_size, c.workers) for c in evaluated] == [(32, 1), (32, 2), (64, 2), (16, 2)]
    assert [note for note in sweep.notes if "not run" in note] == [
        "max_batch_size 1, 2, 4, 8 not run: max_batch_size 16 carried less than max_batch_size 64's 900/s "
        "beyond their measured noise, so a smaller cap would not carry more"], sweep.notes


@pytest.mark.timeout(30)
def test_a_size_with_nothing_within_the_slo_stops_the_ladder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    evaluated: list[Candidate] = []
    sweep = sweep_of(tmp_path, monkeypatch, curve({1: 100.0, 2: 180.0}, 0.01), evaluated)
    sweep.search([Variant("cpu")])
    # nothing within the SLO at the configured batch (32): the ladder first, then the workers
    assert [(c.max_batch_size, c.workers) for c in evaluated] == [(32, 1), (1, 1), (2, 1), (4, 1), (2, 2)]
    assert any(note.startswith("max_batch_size 8, 16, 32, 64 not run: max_batch_size 4 carried nothing "
                               "within the SLO") for note in sweep.notes), sweep.notes


@pytest.mark.timeout(30)
def test_the_ladder_steps_down_to_batch_1_while_the_sizes_carry_as_much(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a model batching does not help (one row's work is the same alone or in a batch): every size
    # within each other's noise; the search picks the smallest of them (``choices.simplest``)
    evaluated: list[Candidate] = []
    sweep = sweep_of(tmp_path, monkeypatch, curve(dict.fromkeys([1, 2, 4, 8, 16, 32, 64], 100.0), 0.05),
                     evaluated)
    outcomes, _ = sweep.search([Variant("cpu")])
    assert [(c.max_batch_size, c.workers) for c in evaluated] == [
        (32, 1), (32, 2), (64, 2), (16, 2), (8, 2), (4, 2), (2, 2), (1, 2)]
    assert not any("not run" in note for note in sweep.notes), sweep.notes
    pick, _, _ = simplest([(o, o.best) for o in outcomes if o.best is not None])
    assert (pick.candidate.max_batch_size, pick.candidate.workers) == (1, 2)


@pytest.mark.timeout(30)
def test_a_size_that_did_not_start_does_not_end_the_descent(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    measure = curve(dict.fromkeys([1, 2, 4, 8, 16, 32, 64], 100.0), 0.05)

    def failing_at_8(c: Candidate) -> Outcome:
        return Outcome(c, error="the server did not start") if c.max_batch_size == 8 else measure(c)

    evaluated: list[Candidate] = []
    sweep = sweep_of(tmp_path, monkeypatch, failing_at_8, evaluated)
    sweep.search([Variant("cpu")])
    assert [c.max_batch_size for c in evaluated] == [32, 32, 64, 16, 8, 4, 2, 1]
    assert not any("not run" in note for note in sweep.notes), sweep.notes
