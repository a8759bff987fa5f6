"""Loading, reloading and unloading a model with versions while it serves, against a real server:
a reload under load from several clients that adds a version and then removes one answers every
request (200, from a version that was there); a version taken out finishes what it admitted; the
routing management set stands over a reload, and a reload that would take out a version it gives
traffic to is refused whole; unload, PATCH and a failed load of one version."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_versions import AUTH, ENV
from tests.support import running_server, write_models

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

LOAD = "/v2/repository/models/echo/load"
ROUTING = "/v2/repository/models/echo/routing"


def echo(versions: list[dict[str, Any]], **extra: Any) -> list[dict[str, Any]]:
    """``echo`` with ``versions`` (each answers ``scale * x + offset``)."""
    return [{"name": "echo", "backend": "echo", "path": "x", "max_batch_size": 8, **extra,
             "versions": versions}]


def version(name: str, scale: float, **extra: Any) -> dict[str, Any]:
    return {"version": name, "options": {"scale": scale, **extra.pop("options", {})}, **extra}


def answers(http: httpx.Client, path: str = "/predict/echo") -> tuple[int, str | None, Any]:
    response = http.post(path, json={"inputs": [1.0]})
    outputs = response.json().get("outputs") if response.status_code == 200 else response.text
    return response.status_code, response.headers.get("x-model-version"), outputs


def shown(http: httpx.Client) -> dict[str, str]:
    """``echo``'s versions in ``/models``, and each one's state."""
    return {m["version"]: m["state"] for m in http.get("/models").json()["models"] if m["name"] == "echo"}


def test_a_reload_under_load_adds_then_removes_a_version_and_fails_no_request(tmp_path: Path) -> None:
    config = write_models(tmp_path / "models.toml", echo(
        [version("1", 2.0, weight=0.5), version("2", 3.0, weight=0.5)]))
    seen: list[tuple[int, str | None, Any]] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            while not stop.is_set():
                seen.append(answers(http))

    with running_server(config, env=ENV) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        clients = [threading.Thread(target=client) for _ in range(4)]
        for thread in clients:
            thread.start()
        try:
            # v2 changes (an offset), v3 appears, the weights are the file's (never changed by
            # management); each new copy takes a while to load, while the old ones serve.
            slow = {"load_delay_ms": 300}
            write_models(config, echo([version("1", 2.0, weight=0.4, options=slow),
                                       version("2", 3.0, weight=0.3, options={"offset": 0.5, **slow}),
                                       version("3", 4.0, weight=0.3, options=slow)]))
            loaded = http.post(LOAD, headers=AUTH)
            assert loaded.status_code == 200, loaded.text
            assert loaded.json()["versions"] == {v: {"state": "READY", "reason": None} for v in "123"}
            assert http.get(ROUTING, headers=AUTH).json()["weights"] == {"1": 0.4, "2": 0.3, "3": 0.3}
            # v1 goes: the version policy loads the latest 2.
            write_models(config, echo([version("1", 2.0), version("2", 3.0, options={"offset": 0.5}),
                                       version("3", 4.0, weight=1.0)], version_policy={"latest": 2}))
            assert http.post(LOAD, headers=AUTH).status_code == 200
            assert shown(http) == {"2": "ready", "3": "ready"}
            assert http.get(ROUTING, headers=AUTH).json() == {
                "name": "echo", "weights": {"2": 0.0, "3": 1.0}, "shadows": {}}
            before = len(seen)
            while len(seen) < before + 20:  # answers after the last reload
                time.sleep(0.01)
        finally:
            stop.set()
            for thread in clients:
                thread.join(30)
        gone = http.post("/predict/echo/versions/1", json={"inputs": [1.0]})
        assert gone.status_code == 404, gone.text
        assert "its versions: ['2', '3']" in gone.json()["error"]["message"]
    assert {status for status, _, _ in seen} == {200}, [s for s in seen if s[0] != 200][:5]
    valid = {("1", 2.0), ("2", 3.0), ("2", 3.5), ("3", 4.0)}
    answered = {(v, outputs[0]) for _, v, outputs in seen}
    assert answered <= valid, answered - valid
    assert {v for v, _ in answered} == {"1", "2", "3"}
    assert seen[-1][1] == "3"  # the last answers come from the one version with traffic


def test_a_version_taken_out_finishes_what_it_admitted(tmp_path: Path) -> None:
    release, started = tmp_path / "release", tmp_path / "started"
    config = write_models(tmp_path / "models.toml", echo([
        version("1", 2.0, options={"holds": {"7": str(release)}, "started": str(started)}),
        version("2", 3.0)]))
    with running_server(config, env=ENV, grace_s=30) as server, \
            httpx.Client(base_url=server.url, timeout=60) as http:
        held: list[tuple[int, str | None, Any]] = []
        request = threading.Thread(target=lambda: held.append(answers_for(http, 7.0, "1")))
        request.start()
        reload = None
        try:
            while not started.exists() or "7.0" not in started.read_text():  # v1's batch runs
                time.sleep(0.01)
            write_models(config, echo([version("2", 3.0)]))
            reloading: list[httpx.Response] = []
            reload = threading.Thread(target=lambda: reloading.append(http.post(LOAD, headers=AUTH)))
            reload.start()
            while shown(http) != {"2": "ready"}:  # v1 taken out, still draining its batch
                time.sleep(0.01)
            assert held == []  # not answered yet: v1 still holds it
            release.touch()
            reload.join(60)
            request.join(60)
            assert reloading[0].status_code == 200, reloading[0].text
            assert held == [(200, "1", [14.0])]  # answered by v1, which admitted it
        finally:
            release.touch()
            request.join(60)
            if reload is not None:
                reload.join(60)


def answers_for(http: httpx.Client, x: float, named: str) -> tuple[int, str | None, Any]:
    response = http.post(f"/predict/echo/versions/{named}", json={"inputs": [x]})
    return response.status_code, response.headers.get("x-model-version"), response.json().get("outputs")


def test_managements_routing_stands_over_a_reload_and_a_reload_against_it_is_refused_whole(
        tmp_path: Path) -> None:
    config = write_models(tmp_path / "models.toml", [
        *echo([version("1", 2.0, weight=0.8), version("2", 3.0, weight=0.2)]),
        {"name": "plain", "backend": "echo", "path": "x"}])
    with running_server(config, env=ENV) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        assert http.put(ROUTING, headers=AUTH, json={"weights": {"1": 0.5, "2": 0.5}}).status_code == 200
        # v3 added as a shadow, v1's weight changed in the file: management's weights stand.
        write_models(config, [*echo([version("1", 2.0, weight=0.1), version("2", 3.0, weight=0.9),
                                     version("3", 4.0, shadow=1.0)]),
                              {"name": "plain", "backend": "echo", "path": "x"}])
        assert http.post(LOAD, headers=AUTH).status_code == 200
        routing = {"name": "echo", "weights": {"1": 0.5, "2": 0.5, "3": 0.0}, "shadows": {"3": 1.0}}
        assert http.get(ROUTING, headers=AUTH).json() == routing
        # Leaving v1 out while it takes half the traffic: refused, nothing changed, no work done.
        write_models(config, [*echo([version("2", 3.0), version("3", 4.0, shadow=1.0)]),
                              {"name": "plain", "backend": "echo", "path": "x"}])
        refused = http.post(LOAD, headers=AUTH)
        assert refused.status_code == 400, refused.text
        assert "leaves out versions ['1'], which take traffic" in refused.json()["error"]
        assert http.get(ROUTING, headers=AUTH).json() == routing
        assert shown(http) == {"1": "ready", "2": "ready", "3": "ready"}
        assert answers(http, "/predict/echo/versions/1") == (200, "1", [2.0])
        # Once the traffic is off it, v1 may go; the rollback would restore a routing naming it.
        assert http.post("/v2/repository/models/echo/versions/2/promote", headers=AUTH).status_code == 200
        assert http.post(LOAD, headers=AUTH).status_code == 200
        assert http.get(ROUTING, headers=AUTH).json() == {
            "name": "echo", "weights": {"2": 1.0, "3": 0.0}, "shadows": {"3": 1.0}}
        rollback = http.post("/v2/repository/models/echo/rollback", headers=AUTH)
        assert rollback.status_code == 400 and "has no versions ['1']" in rollback.json()["error"]

        # PATCH changes every version, and outlives a reload.
        patched = http.patch("/models/echo/config", headers=AUTH, json={"max_batch_size": 3})
        assert patched.status_code == 200, patched.text
        assert {v: c["max_batch_size"] for v, c in patched.json()["versions"].items()} == {"2": 3, "3": 3}
        # A version that fails to load: a 409 naming it, and the versions there serve on.
        write_models(config, [*echo([version("2", 3.0), version("3", 4.0, shadow=1.0),
                                     version("4", 5.0, options={"fail_load": True})]),
                              {"name": "plain", "backend": "echo", "path": "x"}])
        failed = http.post(LOAD, headers=AUTH)
        assert failed.status_code == 409 and "version '4': told to fail at load" in failed.json()["error"]
        assert shown(http) == {"2": "ready", "3": "ready"}
        models = http.get("/models").json()["models"]
        assert {m["version"]: m["config"]["max_batch_size"] for m in models if m["name"] == "echo"} == {
            "2": 3, "3": 3}
        assert answers(http) == (200, "2", [3.0])

        # Unload takes every version out of service; a load brings them back, routing and all.
        unloaded = http.post("/v2/repository/models/echo/unload", headers=AUTH)
        assert unloaded.status_code == 200, unloaded.text
        assert shown(http) == {"2": "unloaded", "3": "unloaded"}
        refused = http.post("/predict/echo", json={"inputs": [1.0]})
        assert refused.status_code == 503 and "unloaded" in refused.text
        write_models(config, [*echo([version("2", 3.0), version("3", 4.0, shadow=1.0)]),
                              {"name": "plain", "backend": "echo", "path": "x"}])
        assert http.post(LOAD, headers=AUTH).status_code == 200
        assert shown(http) == {"2": "ready", "3": "ready"}
        assert answers(http) == (200, "2", [3.0])

        # A model without versions gains them by a reload (v2 as a shadow, the walkthrough's way).
        write_models(config, [*echo([version("2", 3.0), version("3", 4.0, shadow=1.0)]),
                              {"name": "plain", "backend": "echo", "path": "x",
                               "versions": [{"version": "1"}, version("2", 3.0, shadow=1.0)]}])
        assert http.post("/v2/repository/models/plain/load", headers=AUTH).status_code == 200
        assert answers(http, "/predict/plain") == (200, "1", [2.0])
        assert http.get("/v2/repository/models/plain/routing", headers=AUTH).json() == {
            "name": "plain", "weights": {"1": 1.0, "2": 0.0}, "shadows": {"2": 1.0}}
        # The repository index lists each version that serves, as Triton's does.
        index = http.post("/v2/repository/index", headers=AUTH).json()
        assert [(m["name"], m["version"], m["state"]) for m in index] == [
            ("echo", "2", "READY"), ("echo", "3", "READY"), ("plain", "1", "READY"), ("plain", "2", "READY")]
