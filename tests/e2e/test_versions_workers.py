"""Routing changes on a server of 2 real worker processes: promote and rollback through either
worker, under load from several clients, answer every request (200, from one of the two
versions) and apply on every worker; a worker restarted after a change routes as the others."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_versions import AUTH, ENV, served_by, versioned
from tests.support import write_models
from tests.support.cluster import running_workers

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROUTING = "/v2/repository/models/echo/routing"


@contextlib.contextmanager
def under_load(urls: list[str], answers: list[tuple[int, str | None]], clients: int = 4) -> Iterator[None]:
    """``clients`` threads posting to /predict/echo through ``urls`` in turn until the block ends,
    each answer's status and serving version appended to ``answers``."""
    stop = threading.Event()

    def load(url: str) -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            while not stop.is_set():
                response = http.post("/predict/echo", json={"inputs": [1.0]})
                answers.append((response.status_code, response.headers.get("x-model-version")))

    threads = [threading.Thread(target=load, args=(urls[i % len(urls)],)) for i in range(clients)]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)


def test_promote_and_rollback_under_load_answer_every_request_on_every_worker(tmp_path: Path) -> None:
    config = write_models(tmp_path / "models.toml", versioned((0.9, 0.1)))
    answers: list[tuple[int, str | None]] = []
    with running_workers(config, env={0: ENV, 1: ENV}) as workers, httpx.Client(timeout=30) as http:
        with under_load(workers.urls, answers):
            for round_ in range(3):
                through, other = workers.urls[round_ % 2], workers.urls[1 - round_ % 2]
                promoted = http.post(f"{through}/v2/repository/models/echo/versions/2/promote", headers=AUTH)
                assert promoted.status_code == 200, promoted.text
                assert promoted.json()["workers"] == {"applied": [0, 1], "missed": {}}
                for url in workers.urls:  # every worker answers from version 2 alone
                    assert {served_by(http.post(f"{url}/predict/echo", json={"inputs": [1.0]}))
                            for _ in range(30)} == {"2"}
                rolled = http.post(f"{other}/v2/repository/models/echo/rollback", headers=AUTH)
                assert rolled.status_code == 200, rolled.text
                for url in workers.urls:
                    assert http.get(f"{url}{ROUTING}", headers=AUTH).json()["weights"] == {"1": 0.9, "2": 0.1}
        assert len(answers) > 100
        assert {status for status, _ in answers} == {200}, [a for a in answers if a[0] != 200][:5]
        assert {version for _, version in answers} == {"1", "2"}

        # A worker that restarts after a change routes as the others do (desired.json).
        changed = http.put(f"{workers.urls[0]}{ROUTING}", headers=AUTH,
                           json={"weights": {"1": 0.3, "2": 0.7}})
        assert changed.status_code == 200, changed.text
        workers.kill(1)
        workers.start(1)
        workers.wait_loaded(1)
        assert http.get(f"{workers.urls[1]}{ROUTING}", headers=AUTH).json()["weights"] == {"1": 0.3, "2": 0.7}


def test_the_shadow_summary_is_the_whole_servers_whichever_worker_answers(tmp_path: Path) -> None:
    # version 2 shadows every request with 3x + 1 (version 1 answers 2x): |diff| = |x + 1|
    config = write_models(tmp_path / "models.toml", [
        {"name": "echo", "backend": "echo", "path": "x", "versions": [
            {"version": "1"}, {"version": "2", "shadow": 1.0, "options": {"scale": 3.0, "offset": 1.0}}]}])
    metrics = tmp_path / "metrics"  # one /metrics for both, as the supervisor's workers have
    metrics.mkdir()
    env = {**ENV, "PROMETHEUS_MULTIPROC_DIR": str(metrics)}
    with running_workers(config, env={0: env, 1: env}) as workers, httpx.Client(timeout=30) as http:
        for index, url in enumerate(workers.urls):  # two items through each worker
            for x in ([1.0, 2.0] if index == 0 else [50.0, 90.0]):
                assert http.post(f"{url}/predict/echo", json={"inputs": [x]}).status_code == 200
        for url in workers.urls:
            deadline = time.monotonic() + 60
            while True:
                summary = http.get(f"{url}/v2/repository/models/echo/shadow", headers=AUTH)
                assert summary.status_code == 200, summary.text
                pair = summary.json()["pairs"].get("1->2", {})
                if pair.get("copies", {}).get("compared") == 4 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert pair["copies"] == {"compared": 4, "dropped": 0, "failed": 0}
            assert pair["regression"]["items"] == 4
            assert pair["regression"]["mean_abs_diff"] == pytest.approx((2 + 3 + 51 + 91) / 4)
            # the worst items of both workers, the worst (by relative difference |x + 1| / 2x) first
            assert [w["primary"] for w in pair["worst"]] == ["2.0", "4.0", "100.0", "180.0"]


def test_a_reload_of_a_model_with_versions_applies_on_every_worker_under_load(tmp_path: Path) -> None:
    from tests.e2e.test_versions_reload import echo, shown, version

    config = write_models(tmp_path / "models.toml", echo(
        [version("1", 2.0, weight=0.5), version("2", 3.0, weight=0.5)]))
    seen: list[tuple[int, str | None]] = []
    with running_workers(config, env={0: ENV, 1: ENV}) as workers, httpx.Client(timeout=60) as http:
        with under_load(workers.urls, seen):
            # Management's weights, then v3 added by a reload through worker 1: they stand.
            assert http.put(f"{workers.urls[0]}{ROUTING}", headers=AUTH,
                            json={"weights": {"1": 0.7, "2": 0.3}}).status_code == 200
            write_models(config, echo([version("1", 2.0), version("2", 3.0), version("3", 4.0)]))
            added = http.post(f"{workers.urls[1]}/v2/repository/models/echo/load", headers=AUTH)
            assert added.status_code == 200, added.text
            assert added.json()["workers"] == {"applied": [0, 1], "missed": {}}
            for url in workers.urls:
                with httpx.Client(base_url=url, timeout=30) as one:
                    assert shown(one) == {"1": "ready", "2": "ready", "3": "ready"}
                    assert one.get(ROUTING, headers=AUTH).json()["weights"] == {"1": 0.7, "2": 0.3, "3": 0.0}
            # Taking out v1, which has traffic: refused whole, on every worker.
            write_models(config, echo([version("2", 3.0), version("3", 4.0)]))
            refused = http.post(f"{workers.urls[0]}/v2/repository/models/echo/load", headers=AUTH)
            assert refused.status_code == 400 and "leaves out versions ['1']" in refused.text
            for url in workers.urls:
                with httpx.Client(base_url=url, timeout=30) as one:
                    assert shown(one) == {"1": "ready", "2": "ready", "3": "ready"}
            # Traffic moved to v2 (the file would give v3, its latest, all of it), v1 taken out.
            assert http.post(f"{workers.urls[1]}/v2/repository/models/echo/versions/2/promote",
                             headers=AUTH).status_code == 200
            removed = http.post(f"{workers.urls[0]}/v2/repository/models/echo/load", headers=AUTH)
            assert removed.status_code == 200, removed.text
            for url in workers.urls:
                with httpx.Client(base_url=url, timeout=30) as one:
                    assert shown(one) == {"2": "ready", "3": "ready"}
        assert len(seen) > 50
        assert {status for status, _ in seen} == {200}, [s for s in seen if s[0] != 200][:5]
        assert {v for _, v in seen} == {"1", "2"}  # v3 joined with no traffic

        # A worker restarted after the reloads serves the new set, routed as the others.
        workers.kill(1)
        workers.start(1)
        workers.wait_loaded(1)
        with httpx.Client(base_url=workers.urls[1], timeout=30) as one:
            assert shown(one) == {"2": "ready", "3": "ready"}
            assert one.get(ROUTING, headers=AUTH).json()["weights"] == {"2": 1.0, "3": 0.0}
            answer = one.post("/predict/echo", json={"inputs": [1.0]})
            assert (answer.headers["x-model-version"], answer.json()["outputs"]) == ("2", [3.0])
