"""``recommend --version V`` measures version V: every candidate server serves it alone, the
requests name it, the figures are its own, and the report says which version was sized."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from batchserve.cli import main

from tests.support import SERVER_ENV, recommend_status, write_models

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SMALL = ["--max-batch-cap", "2", "--max-wait-ms", "0", "--instances", "1", "--workers", "1",
         "--max-concurrency", "4", "--step-s", "0.3", "--max-step-s", "0.6", "--min-responses", "30",
         "--max-windows", "4", "--no-progress"]


def test_recommend_measures_the_version_it_is_told_to(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", SERVER_ENV["PYTHONPATH"])  # the candidates' servers find echo
    computed = {v: tmp_path / f"computed-{v}.txt" for v in ("1", "2")}
    root = tmp_path / "repo"
    root.mkdir()
    # Routed, every request would go to v1; each version writes down the rows it computed.
    config = write_models(root / "models.toml", [
        {"name": "echo", "backend": "echo", "path": "x", "max_batch_size": 4, "versions": [
            {"version": "1", "weight": 1.0, "options": {"record": str(computed["1"])}},
            {"version": "2", "max_batch_size": 2,
             "options": {"scale": 3.0, "delay_ms": 2.0, "record": str(computed["2"])}}]}], root=root)
    inputs = tmp_path / "numbers.json"
    inputs.write_text("[1.0, 2.0, 3.0]")
    out = tmp_path / "report"
    code = main(["recommend", "--config", str(config), "--model", "echo", "--version", "2",
                 "--inputs", str(inputs), "--slo-p99-ms", "1000", "--out", str(out), *SMALL])
    assert code == recommend_status(out)
    results = json.loads((out / "results.json").read_text())
    assert (results["model"], results["version"]) == ("echo", "2")
    assert "# batchserve recommend: `echo`, version `2`" in (out / "report.md").read_text()
    # The table sized is version 2's (its own options and settings over the model's).
    assert results["model_table"]["options"]["scale"] == 3.0
    assert results["model_table"]["versions"] == [{"version": "2"}]
    # Every candidate server served version 2 alone, and only it computed the requests.
    candidates = sorted((out / "logs").glob("candidate-*.toml"))
    assert candidates
    for path in candidates:
        [model] = tomllib.loads(path.read_text())["models"]
        assert model["versions"] == [{"version": "2"}] and model["options"]["scale"] == 3.0
    assert not computed["1"].exists()
    assert computed["2"].read_text().split()
    for outcome in results["candidates"]:  # figures read from version 2's own series
        assert outcome["error"] is None
        assert all(step["mean_batch_size"] >= 1 for step in outcome["steps"])


def test_a_version_the_model_does_not_declare_is_refused(tmp_path: Path) -> None:
    config = write_models(tmp_path / "models.toml", [
        {"name": "echo", "backend": "echo", "path": "x", "versions": [{"version": "1"}]},
        {"name": "plain", "backend": "echo", "path": "x"}])
    inputs = tmp_path / "numbers.json"
    inputs.write_text("[1.0]")
    for model, version in (("echo", "3"), ("plain", "1")):
        assert main(["recommend", "--config", str(config), "--model", model, "--version", version,
                     "--inputs", str(inputs), "--slo-p99-ms", "1000", "--out", str(tmp_path / "r"),
                     *SMALL]) == 2
