"""batchserve loadtest and its load generator, against real servers (the echo test backend)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from batchserve.cli import main
from batchserve_planning.load.client import build_request
from batchserve_planning.load.generator import run_load
from batchserve_planning.load.inputs import InputError, build_requests, load_samples
from batchserve_planning.load.results import summarize
from batchserve_planning.load.shared import LoadSpec

from tests.support import ServerProcess, running_server, write_models

PNG = base64.b64decode(  # a 1x1 PNG
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")


@pytest.fixture(scope="module")
def echo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """echo (2 ms per batch, batches of up to 8) and poison (400 for the item 13)."""
    config = write_models(tmp_path_factory.mktemp("loadtest") / "models.toml", [
        {"name": "echo", "backend": "echo", "path": "unused", "max_batch_size": 8,
         "options": {"delay_ms": 2.0}},
        {"name": "poison", "backend": "echo", "path": "unused", "options": {"fail_on": 13.0}},
        {"name": "slow", "backend": "echo", "path": "unused", "options": {"delay_ms": 400.0}},
    ])
    with running_server(config) as server:
        yield server


def _numbers(tmp_path: Path, values: list[float]) -> Path:
    path = tmp_path / "numbers.jsonl"
    path.write_text("\n".join(json.dumps(v) for v in values) + "\n")
    return path


def _loadtest(server: ServerProcess, tmp_path: Path, *args: str) -> dict[str, Any]:
    out = tmp_path / "report"
    assert main(["loadtest", "--url", server.url, "--out", str(out), "--no-progress", *args]) == 0
    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    report["markdown"] = (out / "report.md").read_text()
    return report


def test_closed_loop_counts_every_request_and_reads_the_batch_size(
        echo_server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inputs = _numbers(tmp_path, [1.0, 2.0, 3.0])
    report = _loadtest(echo_server, tmp_path, "--model", "echo", "--inputs", str(inputs),
                       "--concurrency", "8", "--requests", "300", "--warmup-s", "0.2")
    result = report["result"]
    assert result["mode"] == "closed" and result["concurrency"] == 8
    assert result["requests"] == 300
    assert result["status_counts"] == {"200": 300}
    assert result["error_rate"] == 0
    assert result["throughput_rps"] > 0 and result["rows_per_s"] > 0
    latency = result["latency_ms"]
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    # Rows per batch from /metrics: between 1 and the model's max_batch_size.
    assert 1 <= result["mean_batch_size"] <= 8
    stages = result["stages_ms"]  # where the time went, server side
    assert list(stages) == ["body", "decode", "compute_input", "queue", "compute_infer", "compute_output"]
    assert all(value >= 0 for value in stages.values()) and stages["compute_infer"] > 0
    assert "Where a successful request's time went" in report["markdown"]
    assert "closed loop, 8 concurrent clients" in report["markdown"]
    assert "| 200 | 300 |" in report["markdown"]
    assert "| throughput (req/s) |" in capsys.readouterr().out


def test_open_loop_reports_its_rate_and_send_lag(echo_server: ServerProcess, tmp_path: Path) -> None:
    inputs = _numbers(tmp_path, [1.0, 2.0])
    report = _loadtest(echo_server, tmp_path, "--model", "echo", "--inputs", str(inputs),
                       "--rate", "300", "--concurrency", "4", "--requests", "120", "--warmup-s", "0.1")
    result = report["result"]
    assert result["mode"] == "open" and result["rate"] == 300
    assert result["requests"] == 120
    assert sum(result["status_counts"].values()) == 120
    assert set(result["send_lag_ms"]) == {"p10", "p50", "p90", "p99", "max", "mean"}
    assert "open loop, Poisson arrivals at 300/s" in report["markdown"]


def test_open_loop_sends_at_poisson_arrival_times(echo_server: ServerProcess) -> None:
    rate, count = 300.0, 150
    request = build_request("127.0.0.1", echo_server.port, "/predict/echo", b'{"inputs": [1.0]}',
                            "application/json")
    spec = LoadSpec("127.0.0.1", echo_server.port, (request,), mode="open", rate=rate, concurrency=8,
                    duration_s=None, count=count, warmup_s=0.1)
    run = run_load(spec)
    intended = np.frombuffer(run.records.intended, dtype=np.float64)
    sent = np.frombuffer(run.records.sent, dtype=np.float64)
    measured = intended >= run.measure_start
    assert measured.sum() == count
    arrivals = np.sort(intended[measured])
    gaps = np.diff(arrivals)
    # Poisson at 300/s: gaps of mean 1/300 s (the mean of 149 gaps is within 25% of it at
    # 3 sigma), spread as an exponential's (coefficient of variation 1), not all at once
    assert gaps.mean() == pytest.approx(1 / rate, rel=0.25)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.3)
    # and they went out over that span, not in one burst (one-sided: a busy machine only
    # delays sends)
    sends = np.sort(sent[measured])
    assert sends[-1] - sends[0] >= 0.5 * (arrivals[-1] - arrivals[0])
    assert summarize(run).status_counts == {"200": count}


def test_counts_by_status_with_an_example_of_each_error(echo_server: ServerProcess, tmp_path: Path) -> None:
    # Requests cycle through the four inputs, so any 100 consecutive ones hold 25 poisoned items.
    inputs = _numbers(tmp_path, [1.0, 2.0, 13.0, 4.0])
    report = _loadtest(echo_server, tmp_path, "--model", "poison", "--inputs", str(inputs),
                       "--concurrency", "4", "--requests", "100", "--warmup-s", "0")
    result = report["result"]
    assert result["status_counts"] == {"200": 75, "400": 25}
    assert result["error_rate"] == 0.25
    assert "poison" in result["error_examples"]["400"]
    assert "Error examples" in report["markdown"]


def test_client_timeouts_are_counted_as_timeouts(echo_server: ServerProcess, tmp_path: Path) -> None:
    inputs = _numbers(tmp_path, [1.0])
    report = _loadtest(echo_server, tmp_path, "--model", "slow", "--inputs", str(inputs),
                       "--concurrency", "2", "--requests", "2", "--warmup-s", "0", "--timeout-s", "0.1")
    assert report["result"]["status_counts"] == {"timeout": 2}


def test_several_load_processes_share_the_requests(echo_server: ServerProcess) -> None:
    host, port = "127.0.0.1", echo_server.port
    request = build_request(host, port, "/predict/echo", b'{"inputs": [1.0, 2.0]}', "application/json")
    spec = LoadSpec(host, port, (request,), concurrency=4, duration_s=None, count=200, warmup_s=0.1)
    run = run_load(spec, processes=2)
    summary = summarize(run, rows_per_request=2)
    assert run.processes == 2 and summary.processes == 2
    assert summary.requests == 200
    assert summary.status_counts == {"200": 200}
    assert summary.rows_per_s == pytest.approx(2 * summary.ok_rps)


def test_an_unreachable_server_is_an_error_that_says_so(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    inputs = _numbers(tmp_path, [1.0])
    code = main(["loadtest", "--url", "http://127.0.0.1:9", "--model", "echo", "--inputs", str(inputs),
                 "--requests", "1", "--no-progress"])
    assert code == 2
    assert "cannot reach http://127.0.0.1:9" in capsys.readouterr().err


def test_samples_from_a_folder_of_every_kind(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps({"inputs": [[1, 2], [3, 4]]}))
    (tmp_path / "b.jsonl").write_text('[5, 6]\n\n{"inputs": [[7, 8]]}\n')
    (tmp_path / "c.txt").write_text("first text\n\nsecond text\n")
    (tmp_path / "d.png").write_bytes(PNG)
    (tmp_path / "ignored.csv").write_text("1,2\n")
    samples = load_samples(tmp_path)
    assert [s.item for s in samples] == [[1, 2], [3, 4], [5, 6], [7, 8], "first text", "second text", PNG]
    assert samples[-1].content_type == "image/png"

    raw = build_requests(samples, host="127.0.0.1", port=8000, model="m", parameters={"top_k": 1})
    assert raw.requests[0].startswith(b"POST /predict/m?top_k=1 HTTP/1.1\r\n")
    assert b"Content-Type: image/png" in raw.requests[0] and raw.requests[0].endswith(PNG)
    assert len(raw.requests) == 1 + 6  # the image, then one request per JSON item
    assert raw.requests[1].endswith(b'{"inputs":[[1,2]],"parameters":{"top_k":1}}')

    encoded = build_requests(samples, host="127.0.0.1", port=8000, model="m", rows_per_request=3,
                             image_mode="base64")
    bodies = [json.loads(r.partition(b"\r\n\r\n")[2]) for r in encoded.requests]
    assert [len(b["inputs"]) for b in bodies] == [3, 3, 3]
    assert bodies[2]["inputs"][0] == base64.b64encode(PNG).decode()
    with pytest.raises(InputError, match="one item per request"):
        build_requests(samples, host="127.0.0.1", port=8000, model="m", rows_per_request=2)


def test_bad_inputs_are_refused_with_the_file_named(tmp_path: Path) -> None:
    (tmp_path / "bad.jsonl").write_text("[1, 2]\n{oops\n")
    with pytest.raises(InputError, match=r"bad.jsonl:2: not valid JSON"):
        load_samples(tmp_path / "bad.jsonl")
    with pytest.raises(InputError, match="no such file"):
        load_samples(tmp_path / "missing.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"no \.json, \.jsonl, \.txt or image files"):
        load_samples(tmp_path / "empty")
