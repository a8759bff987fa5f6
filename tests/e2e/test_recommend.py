"""batchserve recommend: a small real sweep of the diabetes model, and its report."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from batchserve.cli import main
from batchserve.config import parse_models
from batchserve_planning.candidates import Candidate
from batchserve_planning.ladder import batch_sizes

from tests.support import recommend_status, write_models

SLO_MS = 1000.0
"""Generous: the test checks the report's structure and logic, not this machine's speed."""


@pytest.fixture
def repository(tmp_path: Path, diabetes_path: Path) -> Path:
    """A model repository holding the diabetes model, as a user would have it (relative path)."""
    root = tmp_path / "repo"
    (root / "artifacts").mkdir(parents=True)
    (root / "artifacts" / "diabetes.joblib").write_bytes(diabetes_path.read_bytes())
    return write_models(root / "models.toml", [
        {"name": "diabetes", "backend": "sklearn", "path": "artifacts/diabetes.joblib",
         "max_batch_size": 32, "timeout_ms": 5000},
    ])


@pytest.fixture
def rows(tmp_path: Path, diabetes: tuple[np.ndarray, Any]) -> Path:
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(diabetes[0][:20].tolist()))
    return path


def contended(step: dict[str, Any]) -> bool:
    """Whether other processes took enough of the machine during ``step`` for recommend to measure
    a step over the SLO again (``contention``)."""
    from batchserve_planning.contention import Contention

    return Contention(step["others_cpu"], step["steal"]).contended


SMALL = ["--max-wait-ms", "0", "--instances", "1", "--workers", "1", "--max-concurrency", "4",
         "--step-s", "0.3", "--max-step-s", "1", "--min-responses", "50", "--no-progress"]


def test_a_small_sweep_writes_a_report_whose_pick_meets_the_slo(repository: Path, rows: Path,
                                                                tmp_path: Path) -> None:
    out = tmp_path / "report"
    code = main(["recommend", "--config", str(repository), "--model", "diabetes", "--inputs", str(rows),
                 "--slo-p99-ms", str(SLO_MS), "--price-per-hour", "0.5", "--max-batch-cap", "2",
                 "--out", str(out), *SMALL])
    assert code == recommend_status(out)
    results = json.loads((out / "results.json").read_text())
    assert {"date", "model", "slo_p99_ms", "price_per_hour", "model_size", "candidates", "skipped",
            "final_round", "pick", "predicted", "verification", "elapsed_s"} <= set(results)
    # the configured size first (within the cap of 2), then the ladder down from it
    assert [c["candidate"]["max_batch_size"] for c in results["candidates"]] == [2, 1]
    for outcome in results["candidates"]:
        assert outcome["error"] is None
        assert outcome["peak_rss_bytes"] > 0
        # what the budget plans the checks by: the server's start and each step's time, measured
        assert 0 < outcome["start_s"] < outcome["seconds"]
        assert all(step["seconds"] > 0 for step in outcome["steps"])
        levels = [step["concurrency"] for step in outcome["steps"]]
        assert levels[0] == 1 and max(levels) <= 4
        best = outcome["best"]
        assert best is not None and best["within_slo"] and best["p99_ms"] <= SLO_MS
        assert best["rows_per_s"] == max(s["rows_per_s"] for s in outcome["steps"] if s["within_slo"])
    assert results["model_size"]["estimator"] == "LinearRegression"

    # The pick meets the SLO it measured, in the final round that predicts it.
    assert len(results["final_round"]) == 2
    pick, predicted = results["pick"], results["predicted"]
    assert predicted["within_slo"] and predicted["p99_ms"] <= SLO_MS
    assert any(f["candidate"] == pick and f["step"] == predicted for f in results["final_round"])
    check = results["verification"]
    assert check["predicted_rows_per_s"] == predicted["rows_per_s"]
    # The finalists, and then the re-run with the pick's final-round server, measured in turn
    # (``finals``): a round is one run of each, so each has as many runs as the other.
    assert len({f["step"]["runs"] for f in results["final_round"]}) == 1
    reference = check["reference"]
    assert reference is not None and reference["runs"] == check["step"]["runs"]
    assert check["ratio"] == pytest.approx(check["measured_rows_per_s"] / reference["rows_per_s"])
    to_prediction = check["measured_rows_per_s"] / predicted["rows_per_s"]
    assert check["ratio_to_prediction"] == pytest.approx(to_prediction)
    assert check["drift"] == pytest.approx(reference["rows_per_s"] / predicted["rows_per_s"])
    assert check["p99_within_slo"] == (check["measured_p99_ms"] <= SLO_MS)
    assert check["throughput_within_10pct"] == (abs(check["ratio"] - 1) <= 0.10)
    # where the re-run's requests spent their time, server side, every stage measured
    assert list(check["stages_ms"]) == ["body", "decode", "compute_input", "queue", "compute_infer",
                                        "compute_output"]
    assert all(value >= 0 for value in check["stages_ms"].values())
    assert sum(check["stages_ms"].values()) > 0

    report = (out / "report.md").read_text()
    assert "### Where a request's time went (the re-run of the pick)" in report
    assert f"Most of it is **{max(check['stages_ms'], key=check['stages_ms'].get)}**" in report
    for heading in ("## Recommendation", "### Final round", "### Checked by starting it again", "## Cost",
                    "## Trade-off", "## Model size", "## All candidates", "## Every ramp step"):
        assert heading in report
    assert "](frontier.png)" in report
    assert "**(pick)**" in report
    assert "| its final-round server, in turn with the re-run |" in report
    # The recommended block is valid configuration, with the user's own relative path.
    block = report.split("```toml\n")[1].split("```")[0]
    (config,) = parse_models(tomllib.loads(block), source=repository)
    assert config.max_batch_size == results["candidates"][pick]["candidate"]["max_batch_size"]
    assert tomllib.loads(block)["models"][0]["path"] == "artifacts/diabetes.joblib"
    assert (out / "frontier.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert (out / "logs" / "candidate-01.toml").is_file()


def test_an_slo_nothing_can_meet_gives_no_recommendation(repository: Path, rows: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    code = main(["recommend", "--config", str(repository), "--model", "diabetes", "--inputs", str(rows),
                 "--slo-p99-ms", "0.001", "--max-batch-cap", "1", "--out", str(out), *SMALL])
    assert code == 1
    results = json.loads((out / "results.json").read_text())
    assert results["pick"] is None and results["verification"] is None and results["final_round"] == []
    (outcome,) = results["candidates"]
    # One client, over the SLO: measured once more only where other work took the CPUs meanwhile.
    assert [s["concurrency"] for s in outcome["steps"]] == [1] * (2 if contended(outcome["steps"][0]) else 1)
    assert not any(s["within_slo"] for s in outcome["steps"])
    assert "## No recommendation" in capsys.readouterr().out


def test_refuses_what_it_cannot_sweep(repository: Path, rows: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    base = ["recommend", "--config", str(repository), "--inputs", str(rows), "--slo-p99-ms", "10"]
    assert main([*base, "--model", "diabetes", "--devices", "cuda"]) == 2
    assert "CPU only" in capsys.readouterr().err
    assert main([*base, "--model", "nope"]) == 2
    assert "no model 'nope'" in capsys.readouterr().err


def test_candidates_and_their_configuration() -> None:
    assert batch_sizes(1) == [1]
    assert batch_sizes(48) == [1, 2, 4, 8, 16, 32]
    candidate = Candidate(8, 2.0, 2, "cuda", "float16")
    table = candidate.table({"name": "m", "backend": "resnet50", "path": "w.safetensors",
                             "options": {"top_k": 3}})
    assert table["max_batch_size"] == 8 and table["max_wait_ms"] == 2.0 and table["instances"] == 2
    assert table["device"] == "cuda" and table["options"] == {"top_k": 3, "dtype": "float16"}
    assert candidate.label() == "batch 8, wait 2 ms, 1 worker x 2 inst, cuda float16"
    assert Candidate(1, 0, 1).table({"name": "m", "options": {"a": 1}})["options"] == {"a": 1}


def test_instances_on_cpu_split_the_cores_between_them() -> None:
    from batchserve_planning.sweep import threads_per_instance

    text = {"name": "m", "backend": "transformer", "path": "t"}
    assert threads_per_instance(text, 4, "cpu", 2) == 2
    assert threads_per_instance(text, 3, "cpu", 4) == 1
    assert threads_per_instance(text, 2, "cpu", 1) is None  # one instance: torch's own choice
    assert threads_per_instance(text, 2, "cuda", 2) is None
    assert threads_per_instance({**text, "options": {"torch_threads": 2}}, 2, "cpu", 2) is None
    assert threads_per_instance({"name": "m", "backend": "sklearn", "path": "d"}, 2, "cpu", 2) is None
    candidate = Candidate(16, 0.0, 2, "cpu", "float32", torch_threads=1)
    assert candidate.table({**text, "options": {"max_length": 64}})["options"] == {
        "max_length": 64, "torch_threads": 1}
    assert candidate.label() == "batch 16, wait 0 ms, 1 worker x 2 inst x 1 thread"


def test_the_budget_stops_new_candidates_but_still_checks_the_pick(repository: Path, rows: Path,
                                                                   tmp_path: Path) -> None:
    out = tmp_path / "report"
    code = main(["recommend", "--config", str(repository), "--model", "diabetes", "--inputs", str(rows),
                 "--slo-p99-ms", str(SLO_MS), "--max-batch-cap", "4", "--budget-s", "1", "--out", str(out),
                 *SMALL])
    assert code == recommend_status(out)
    results = json.loads((out / "results.json").read_text())
    # The first candidate (the configured size, within the cap of 4) always runs; after it, no
    # other fits in one second.
    assert [c["label"] for c in results["candidates"]] == ["batch 4, wait 0 ms, 1 worker x 1 inst"]
    assert results["skipped"] == ["batch 2, wait 0 ms, 1 worker x 1 inst",
                                  "batch 1, wait 0 ms, 1 worker x 1 inst"]
    assert results["pick"] == 0 and "ratio" in results["verification"]
    report = (out / "report.md").read_text()
    assert "not run for lack of budget: batch 2, wait 0 ms, 1 worker x 1 inst" in report


BATCH_MS = 40.0
"""The echo model's time per batch, whatever its size: a batch of B rows is B rows per 40 ms."""
KNOWN_SLO_MS = 150.0
"""Met by every max_batch_size with max_wait_ms = 0 (one or two batches: ~40-80 ms), missed by
max_wait_ms = 200 (a lone client's row waits the 200 ms for company: ~240 ms)."""


def test_the_pick_is_the_most_capacity_within_an_slo_that_rules_candidates_out(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support import SERVER_ENV, echo_to_plan

    monkeypatch.setenv("PYTHONPATH", SERVER_ENV["PYTHONPATH"])  # the candidates' servers find echo
    config, inputs = echo_to_plan(tmp_path, BATCH_MS)
    out = tmp_path / "report"
    code = main(["recommend", "--config", str(config), "--model", "echo", "--inputs", str(inputs),
                 "--slo-p99-ms", str(KNOWN_SLO_MS), "--max-batch-cap", "4", "--max-wait-ms", "0,200",
                 "--instances", "1", "--workers", "1", "--max-concurrency", "32", "--step-s", "0.3",
                 "--max-step-s", "0.6",
                 "--min-responses", "20", "--no-progress", "--out", str(out)])
    assert code == recommend_status(out)
    results = json.loads((out / "results.json").read_text())
    outcomes = {(c["candidate"]["max_batch_size"], c["candidate"]["max_wait_ms"]): c
                for c in results["candidates"]}
    # the configured size (4, the cap) first, then down: batch 2 carries half as much, so batch 1
    # is not run (a smaller cap would not carry more)
    assert sorted(outcomes) == [(2, 0.0), (4, 0.0), (4, 200.0)]
    assert any(note.startswith("max_batch_size 1 not run: max_batch_size 2 carried less than")
               for note in results["decisions"]), results["decisions"]
    waited = outcomes[(4, 200.0)]
    assert waited["best"] is None  # ruled out: its first step already missed the SLO
    assert [s["within_slo"] for s in waited["steps"]] == [False] * (2 if contended(waited["steps"][0]) else 1)
    assert waited["steps"][0]["p99_ms"] > KNOWN_SLO_MS
    for (size, _), outcome in outcomes.items():
        for step in outcome["steps"]:  # no step beats the model's capacity (but for a batch
            # more or less at the edges of a step of 0.3 s or more: 30%)
            assert step["rows_per_s"] <= 1.3 * size * 1000 / BATCH_MS, (size, step)
            assert step["mean_batch_size"] is None or step["mean_batch_size"] <= size
        if outcome is not waited:
            assert outcome["best"] is not None and outcome["best"]["p99_ms"] <= KNOWN_SLO_MS
    pick = results["candidates"][results["pick"]]["candidate"]
    assert (pick["max_batch_size"], pick["max_wait_ms"]) == (4, 0.0)  # the most capacity
    check = results["verification"]
    assert check["p99_within_slo"] and check["measured_p99_ms"] <= KNOWN_SLO_MS
    assert check["measured_error_rate"] == 0
    # the re-run started the pick's configuration
    (rerun,) = (out / "logs").glob("verification-*.toml")
    (model,) = tomllib.loads(rerun.read_text())["models"]
    assert (model["max_batch_size"], model["max_wait_ms"], model["instances"]) == (4, 0.0, 1)
    assert model["options"]["delay_ms"] == BATCH_MS


def _two_cores() -> None:
    from batchserve.cluster.cores import available_cores

    if available_cores() < 2:
        pytest.skip("two workers need two cores")


def test_workers_are_searched_and_the_report_names_the_picks(repository: Path, rows: Path,
                                                             tmp_path: Path) -> None:
    _two_cores()
    out = tmp_path / "report"
    at = SMALL.index("--workers")
    small = SMALL[:at] + SMALL[at + 2:]
    code = main(["recommend", "--config", str(repository), "--model", "diabetes", "--inputs", str(rows),
                 "--slo-p99-ms", str(SLO_MS), "--max-batch-cap", "1", "--workers", "1,2",
                 "--server-cpus", "0,1", "--out", str(out), *small])
    assert code == recommend_status(out)
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["workers"] == [1, 2] and results["settings"]["server_cores"] == 2
    one, two = results["candidates"]
    assert (one["candidate"]["workers"], two["candidate"]["workers"]) == (1, 2)
    assert one["error"] is None and two["error"] is None and two["best"] is not None
    # The whole server's memory: the supervisor and both workers, each with its copy of the model.
    assert one["processes"] == 1 and two["processes"] == 3
    assert two["peak_rss_bytes"] > 1.5 * one["peak_rss_bytes"]
    pick = results["candidates"][results["pick"]]["candidate"]["workers"]
    report = (out / "report.md").read_text()
    assert f"`batchserve serve --workers {pick}`" in report
    assert f"**batch 1, wait 0 ms, {pick} worker{'s' if pick > 1 else ''} x 1 inst**" in report
    assert "3 processes: the supervisor and its workers" in report or pick == 1
    assert "the supervisor's and each worker's peak resident set, summed" in report


def test_more_workers_are_picked_where_they_add_capacity(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The echo model sleeps per batch (no CPU): two workers serve two batches at once, twice one
    worker's capacity. Two instances in each would need four cores: not tried on two."""
    from tests.support import SERVER_ENV

    _two_cores()
    monkeypatch.setenv("PYTHONPATH", SERVER_ENV["PYTHONPATH"])
    root = tmp_path / "repo"
    root.mkdir()
    config = write_models(root / "models.toml", [
        {"name": "echo", "backend": "echo", "path": "x", "max_batch_size": 1,
         "options": {"delay_ms": BATCH_MS}}], root=root)
    inputs = tmp_path / "numbers.json"
    inputs.write_text(json.dumps([1.0, 2.0, 3.0]))
    out = tmp_path / "report"
    code = main(["recommend", "--config", str(config), "--model", "echo", "--inputs", str(inputs),
                 "--slo-p99-ms", "2000", "--max-batch-cap", "1", "--max-wait-ms", "0",
                 "--instances", "1,2", "--workers", "auto", "--server-cpus", "0,1",
                 "--max-concurrency", "16", "--step-s", "0.3", "--max-step-s", "0.6",
                 "--min-responses", "20", "--no-progress", "--out", str(out)])
    assert code == recommend_status(out)
    results = json.loads((out / "results.json").read_text())
    layouts = [(c["candidate"]["workers"], c["candidate"]["instances"]) for c in results["candidates"]]
    assert layouts == [(1, 1), (2, 1)]
    assert results["candidates"][results["pick"]]["candidate"]["workers"] == 2
    (rerun,) = (out / "logs").glob("verification-*.toml")
    assert tomllib.loads(rerun.read_text())["models"][0]["instances"] == 1


def test_a_sweep_over_grpc_measures_the_model_as_grpc_clients_call_it(repository: Path, rows: Path,
                                                                      tmp_path: Path) -> None:
    out = tmp_path / "report"
    code = main(["recommend", "--config", str(repository), "--model", "diabetes", "--inputs", str(rows),
                 "--slo-p99-ms", str(SLO_MS), "--max-batch-cap", "1", "--protocol", "grpc",
                 "--out", str(out), *SMALL])
    assert code == recommend_status(out)
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["protocol"] == "grpc"
    assert "over gRPC (input FP64 in raw_input_contents)" in results["settings"]["sent"]
    (outcome,) = results["candidates"]
    assert outcome["error"] is None and outcome["steps"]
    # ModelInferRequests sent anywhere but a gRPC port would all fail: these were answered.
    assert all(step["error_rate"] == 0 and step["rows_per_s"] > 0 for step in outcome["steps"])
    assert results["verification"]["measured_rows_per_s"] > 0


def test_grpc_is_refused_where_the_fleet_check_runs_behind_nginx(repository: Path, rows: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recommend", "--config", str(repository), "--model", "diabetes", "--inputs", str(rows),
                 "--slo-p99-ms", "10", "--protocol", "grpc",
                 "--hardware", "models/hardware.example.toml"]) == 2
    assert "over HTTP only" in capsys.readouterr().err
