"""``recommend --hardware``: profiles measured on their share of this machine, sized, priced, checked.

The model is the echo test backend: a batch takes ``BATCH_MS`` whatever its size, so its capacity
is known (max_batch_size rows per ``BATCH_MS``) and the same on one CPU as on two; the cheaper
profile must win, and every figure of the sizing is recomputed here from results.json.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from batchserve.cli import main
from batchserve_planning.capacity import MEMORY_HEADROOM, MEMORY_SIZES
from batchserve_planning.replicas import nginx_missing

from tests.support import SERVER_ENV, echo_to_plan

BATCH_MS = 20.0
SLO_MS = 250.0
TARGET_RPS = 60.0
SMALL = ["--max-batch-cap", "4", "--max-wait-ms", "0", "--instances", "1", "--workers", "1",
         "--max-concurrency", "16", "--step-s", "0.3", "--max-step-s", "0.6", "--min-responses", "20",
         "--max-windows", "4", "--budget-s", "400", "--no-progress"]
HARDWARE = """
[[profiles]]
name = "one"
cpus = 1
memory_gib = 2
price_per_hour = 0.05
price_example = true

[[profiles]]
name = "two"
cpus = 2
memory_gib = 4
price_per_hour = 0.10
price_source = "a test's own figure"

[[profiles]]
name = "huge"
cpus = 4096
memory_gib = 64
price_per_hour = 9.0
price_example = true
"""


@pytest.fixture
def echo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, Path]:
    monkeypatch.setenv("PYTHONPATH", SERVER_ENV["PYTHONPATH"])  # the candidates' servers find echo
    config, inputs = echo_to_plan(tmp_path, BATCH_MS)
    hardware = tmp_path / "hardware.toml"
    hardware.write_text(HARDWARE)
    return config, inputs, hardware


def recommend(echo: tuple[Path, Path, Path], out: Path, *extra: str) -> int:
    config, inputs, hardware = echo
    return main(["recommend", "--config", str(config), "--model", "echo", "--inputs", str(inputs),
                 "--hardware", str(hardware), "--out", str(out), *SMALL, *extra])


def recomputed(entry: dict[str, Any], load: dict[str, Any]) -> dict[str, Any]:
    """The sizing from the measured peak, memory and price, by the rules docs/planning.md gives."""
    peak = entry["open_loop"]["rate_rps"]
    # The headroom grows with the service time's measured variation: x (1 + cv^2), at most 50%.
    cv = entry["variance"]["service_cv"]
    headroom = load["headroom"] if cv is None else max(load["headroom"],
                                                       min(0.5, load["headroom"] * (1 + cv**2)))
    assert entry["variance"]["headroom"] == pytest.approx(headroom)
    assert peak == max(s["offered_rps"] for s in entry["open_loop"]["steps"] if s["within_slo"])
    replicas = max(1, math.ceil(load["target_rps"] / (peak * (1 - headroom)) - 1e-9))
    dollars = replicas * entry["profile"]["price_per_hour"]
    rss = entry["candidates"][entry["pick"]]["peak_rss_bytes"]
    needed = math.ceil(rss * (1 + MEMORY_HEADROOM))
    return {"replicas": replicas, "dollars_per_hour": dollars,
            "dollars_per_million": dollars / (load["target_rps"] * load["rows_per_request"] * 3600) * 1e6,
            "peak_rss_bytes": rss, "memory_needed_bytes": needed,
            "memory_size_bytes": next(s for s in MEMORY_SIZES if s >= needed)}


def test_two_profiles_the_cheaper_wins_and_its_pick_holds_when_run_again(
        echo: tuple[Path, Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "report"
    code = recommend(echo, out, "--slo-p99-ms", str(SLO_MS), "--target-rps", str(TARGET_RPS))
    results = json.loads((out / "results.json").read_text())
    assert code == (0 if results["checks"]["rerun"]["holds"] else 3)  # 3: a pick its re-run did not confirm
    entries = {e["profile"]["name"]: e for e in results["profiles"]}
    assert list(entries) == ["one", "two", "huge"]
    assert "needs 4096 CPUs" in entries["huge"]["refused"]
    assert entries["one"]["placement"]["server_cpus"] == [results["machine"]["cpus"][0]]
    assert entries["two"]["placement"]["isolated"] is (len(results["machine"]["cpus"]) > 2)
    for name in ("one", "two"):
        entry = entries[name]
        assert entry["refused"] is None and entry["why_not"] is None
        sizing = entry["sizing"]
        for key, value in recomputed(entry, results["load"]).items():
            assert sizing[key] == pytest.approx(value), (name, key)
        # Open loop: a peak within what the model can do (4 rows per 20 ms), each step's
        # arrivals at its offered rate
        assert sizing["peak_rps"] <= 1.3 * 4 * 1000 / BATCH_MS
    assert results["pick_profile"] == "one"  # the same capacity for half the price
    assert "more expensive" in results["losers"]["two"] and "needs 4096 CPUs" in results["losers"]["huge"]

    rerun = results["checks"]["rerun"]
    sizing = entries["one"]["sizing"]
    assert rerun["offered_rps"] == pytest.approx(TARGET_RPS / sizing["replicas"])
    assert rerun["p99_within_slo"] and rerun["p99_ms"] <= SLO_MS
    assert rerun["ratio"] == pytest.approx(rerun["carried_rps"] / rerun["arrived_rps"])
    replicas = results["checks"]["replicas"]
    if nginx_missing() is not None:
        assert replicas == {"skipped": nginx_missing()}
    else:  # two 1-CPU replicas fit this machine's CPUs (2 or more), so the check ran
        assert len(results["machine"]["cpus"]) >= 2 and "skipped" not in replicas
        assert replicas["profile"] == "one" and replicas["replicas"] == 2
        assert replicas["predicted_rps"] == pytest.approx(2 * sizing["peak_rps"])
        if replicas["measured_rps"] is not None:
            assert replicas["ratio"] == pytest.approx(replicas["measured_rps"] / replicas["predicted_rps"])

    report = (out / "report.md").read_text()
    for text in ("## Which machine", "x one", "an example price", "### Why the others lost",
                 "## Checked by measuring it again", "### Two replicas behind nginx",
                 "](profiles.png)", "## Trade-off", "refused: needs 4096 CPUs"):
        assert text in report, text
    assert (out / "profiles.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_an_slo_no_profile_can_meet_exits_1_saying_what_came_closest(
        echo: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    code = recommend(echo, out, "--slo-p99-ms", "5", "--target-rps", str(TARGET_RPS), "--max-batch-cap", "1")
    assert code == 1
    assert "no profile carries the load" in capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["pick_profile"] is None and "closest: " in results["closest"]
    for entry in results["profiles"][:2]:
        assert entry["sizing"] is None
        assert entry["why_not"].startswith("too slow for the SLO at any batch size")
        lowest = min(s["p99_ms"] for c in entry["candidates"] for s in c["steps"])
        assert lowest > 5 and f"{lowest:,.1f} ms" in entry["why_not"]
    assert "**No profile carries this load within the SLO.**" in (out / "report.md").read_text()


def test_a_load_without_profiles_or_a_bad_file_is_refused(echo: tuple[Path, Path, Path], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    config, inputs, hardware = echo
    base = ["recommend", "--config", str(config), "--model", "echo", "--inputs", str(inputs),
            "--slo-p99-ms", "100"]
    assert main([*base, "--target-rps", "10"]) == 2
    assert "--hardware" in capsys.readouterr().err
    hardware.write_text('[[profiles]]\nname = "x"\ncpus = 1\nmemory_gib = 1\nprice_per_hour = 1\n')
    assert main([*base, "--hardware", str(hardware), "--out", str(tmp_path / "r")]) == 2
    assert "where the price comes from" in capsys.readouterr().err
