"""Shadow versions against a real server: the comparison histograms equal the values computed
offline for two linear models and two classifiers; a shadow that is held never holds the
primary's answers, and its bounded queue drops (and counts) the copies past it; a shadow that
fails never fails the request."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_versions import AUTH, ENV
from tests.support import running_server, sample, write_models

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

PAIR = {"model": "m", "primary": "1", "shadow": "2"}


def shadowed(backend: str, primary: dict[str, Any], shadow: dict[str, Any],
             **version: Any) -> list[dict[str, Any]]:
    """Model ``m``: version 1 takes the traffic, version 2 shadows all of it."""
    return [{"name": "m", "backend": backend, "path": "x", "versions": [
        {"version": "1", "options": primary},
        {"version": "2", "shadow": 1.0, "options": shadow, **version}]}]


def wait_for_copies(url: str, count: int) -> dict[str, float]:
    """The copies by outcome, once ``count`` have ended (polled; the copies run after the answers)."""
    deadline = time.monotonic() + 60
    while True:
        outcomes = {o: sample(url, "batchserve_shadow_copies_total", **PAIR, outcome=o)
                    for o in ("compared", "dropped", "failed")}
        if sum(outcomes.values()) >= count or time.monotonic() > deadline:
            return outcomes
        time.sleep(0.05)


def test_regression_differences_equal_the_offline_values(tmp_path: Path) -> None:
    # primary 2x, shadow 3x + 1: |diff| = |x + 1|, relative |x + 1| / |2x|
    config = write_models(tmp_path / "models.toml", shadowed("echo", {"scale": 2.0},
                                                             {"scale": 3.0, "offset": 1.0}))
    inputs = [[0.5, 1.0], [-3.0], [10.0, 0.25, 4.0], [-1.0]]
    with running_server(config) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        for items in inputs:
            answer = http.post("/predict/m", json={"inputs": items})
            assert answer.json()["outputs"] == [2 * x for x in items]  # the primary's answer
        assert wait_for_copies(server.url, len(inputs)) == {"compared": 4, "dropped": 0, "failed": 0}
        xs = [x for items in inputs for x in items]
        diffs = [abs(x + 1) for x in xs]
        relative = [abs(x + 1) / abs(2 * x) for x in xs]
        assert sample(server.url, "batchserve_shadow_abs_diff_count", **PAIR) == len(xs)
        assert sample(server.url, "batchserve_shadow_abs_diff_sum", **PAIR) == pytest.approx(sum(diffs))
        assert sample(server.url, "batchserve_shadow_rel_diff_sum", **PAIR) == pytest.approx(sum(relative))
        for bound in (0.0, 1.0, 10.0, 100.0):
            assert sample(server.url, "batchserve_shadow_abs_diff_bucket", **PAIR, le=str(bound)) == sum(
                d <= bound for d in diffs), bound
        summary = httpx.get(f"{server.url}/v2/repository/models/m/shadow", headers=AUTH)
        assert summary.status_code == 403  # the management API is off without its token


def test_classifier_agreement_and_the_summary_equal_the_offline_values(tmp_path: Path) -> None:
    # the primary says yes above 0, the shadow above 1: they disagree where 0 < sum <= 1
    config = write_models(tmp_path / "models.toml", shadowed("sign", {"threshold": 0.0},
                                                             {"threshold": 1.0}))
    rows = [[1.0, 1.0], [0.2, 0.3], [-1.0, 0.0], [0.5, 0.5], [3.0, -2.5]]
    disagree = [0 < sum(r) <= 1 for r in rows]
    with running_server(config, env=ENV) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        assert http.post("/predict/m", json={"inputs": rows}).status_code == 200
        assert wait_for_copies(server.url, 1)["compared"] == 1
        agreement = {"count": len(rows), "sum": len(rows) - sum(disagree)}
        assert sample(server.url, "batchserve_shadow_label_agreement_count", **PAIR) == agreement["count"]
        assert sample(server.url, "batchserve_shadow_label_agreement_sum", **PAIR) == agreement["sum"]
        # a disagreement moves each class's probability by 0.5 (0.75 <-> 0.25), an agreement by 0
        assert sample(server.url, "batchserve_shadow_probability_shift_sum", **PAIR) == 0.5 * sum(disagree)
        summary = http.get("/v2/repository/models/m/shadow", headers=AUTH)
        assert summary.status_code == 200, summary.text
        pair = summary.json()["pairs"]["1->2"]
        assert pair["copies"] == {"compared": 1, "dropped": 0, "failed": 0}
        assert pair["classification"]["items"] == len(rows)
        assert pair["classification"]["agreement"] == pytest.approx(agreement["sum"] / len(rows))
        assert [w["primary"] for w in pair["worst"][:sum(disagree)]] == [
            '{"label":"yes","scores":{"no":0.25,"yes":0.75}}'] * sum(disagree)
        assert all('"label":"no"' in w["shadow"] for w in pair["worst"][:sum(disagree)])


def test_a_held_shadow_never_holds_the_answers_and_its_full_queue_drops_copies(tmp_path: Path) -> None:
    release = tmp_path / "release"
    config = write_models(tmp_path / "models.toml", shadowed(
        "echo", {}, {"hold_until": str(release)}, max_queue=2))
    requests = 20
    with running_server(config) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        # every answer comes while the shadow's first batch is held (it waits for the file)
        for x in range(requests):
            answer = http.post("/predict/m", json={"inputs": [float(x)]})
            assert answer.status_code == 200 and answer.headers["x-model-version"] == "1"
        # two copies fit its queue (max_queue = 2 rows), the others were dropped at once
        assert sample(server.url, "batchserve_shadow_copies_total", **PAIR, outcome="dropped") == requests - 2
        release.touch()
        assert wait_for_copies(server.url, requests) == {"compared": 2, "dropped": requests - 2, "failed": 0}


def test_a_failing_shadow_never_fails_the_request(tmp_path: Path) -> None:
    config = write_models(tmp_path / "models.toml", shadowed("echo", {}, {"fail_on": 5.0}))
    with running_server(config) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        for x in (1.0, 5.0, 7.0):
            answer = http.post("/predict/m", json={"inputs": [x]})
            assert answer.status_code == 200 and answer.json()["outputs"] == [2 * x]
        assert wait_for_copies(server.url, 3) == {"compared": 2, "dropped": 0, "failed": 1}
