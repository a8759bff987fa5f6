"""A model's versions against a real server: explicit versions on every protocol's path, the
unknown version's 404, weights within a binomial bound, sticky routing keys, and the management
API's routing changes (refused whole when wrong)."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from batchserve.routing import Routing, key_point

from tests.support import running_server, sample, write_models

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

TOKEN = "versions-management-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ENV = {"BATCHSERVE_MANAGEMENT_TOKEN": TOKEN}


def versioned(weights: tuple[float, float] = (0.8, 0.2), **extra: Any) -> list[dict[str, Any]]:
    """``echo`` in two versions: 1 answers 2x, 2 answers 3x; and ``plain``, with no versions."""
    return [
        {"name": "echo", "backend": "echo", "path": "x", "max_batch_size": 8, **extra,
         "versions": [{"version": "1", "weight": weights[0], "options": {"scale": 2.0}},
                      {"version": "2", "weight": weights[1], "options": {"scale": 3.0}}]},
        {"name": "plain", "backend": "echo", "path": "x"},
    ]


def served_by(response: httpx.Response) -> str:
    """The version that answered, checked against the output (1 doubles, 2 triples 1.0)."""
    assert response.status_code == 200, response.text
    version = response.headers["x-model-version"]
    assert response.json()["outputs"] == [{"1": 2.0, "2": 3.0}[version]]
    return version


def test_explicit_versions_on_each_path_and_the_unknown_versions_404(tmp_path: Path) -> None:
    config = write_models(tmp_path / "models.toml", versioned())
    with running_server(config, env=ENV) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        for version, output in (("1", 2.0), ("2", 3.0)):
            answer = http.post(f"/predict/echo/versions/{version}", json={"inputs": [1.0]})
            assert answer.json()["outputs"] == [output]
            assert answer.headers["x-model-version"] == version
            v2 = http.post(f"/v2/models/echo/versions/{version}/infer", json={
                "inputs": [{"name": "input", "shape": [1], "datatype": "FP64", "data": [1.0]}]})
            assert v2.status_code == 200, v2.text
            data = v2.json()["outputs"][0]["data"]  # the echo backend's output is a string tensor
            assert (v2.json()["model_version"], [float(v) for v in data]) == (version, [output])
        assert http.post("/predict/echo:2", json={"inputs": [1.0]}).status_code == 404  # one way
        missing = http.post("/predict/echo/versions/3", json={"inputs": [1.0]})
        assert missing.status_code == 404
        assert missing.json()["error"]["message"] == (
            "model 'echo' has no version '3'; its versions: ['1', '2']")
        v2_missing = http.post("/v2/models/echo/versions/3/infer", json={
            "inputs": [{"name": "input", "shape": [1], "datatype": "FP64", "data": [1.0]}]})
        assert v2_missing.status_code == 404 and "its versions: ['1', '2']" in v2_missing.json()["error"]
        # A model without versions is version "1", as before: no header, the same answer.
        plain = http.post("/predict/plain/versions/1", json={"inputs": [1.0]})
        assert plain.json()["outputs"] == [2.0] and "x-model-version" not in plain.headers
        unnamed = http.post("/predict/plain", json={"inputs": [1.0]})
        assert unnamed.json() == {"model": "plain", "outputs": [2.0]}
        assert http.post("/predict/plain/versions/2", json={"inputs": [1.0]}).json()["error"]["message"] == (
            "model 'plain' has no version '2'; its versions: ['1']")
        assert http.get("/v2/models/echo").json()["versions"] == ["1", "2"]
        shown = {m["version"]: (m["weight"], m["role"]) for m in http.get("/models").json()["models"]
                 if m["name"] == "echo"}
        assert shown == {"1": (0.8, "primary"), "2": (0.2, "primary")}
        # Metrics per version; the model without versions keeps its series as they were.
        assert sample(server.url, "batchserve_requests_total", model="echo", version="2", code="200") >= 2
        assert sample(server.url, "batchserve_requests_total", model="echo", version="3", code="404") == 0
        assert sample(server.url, "batchserve_requests_total", model="plain", code="200") == 2


def test_weights_hold_within_a_binomial_bound(tmp_path: Path) -> None:
    config = write_models(tmp_path / "models.toml", versioned((0.8, 0.2)))
    requests = 2000
    with running_server(config, env=ENV) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        counts = Counter(served_by(http.post("/predict/echo", json={"inputs": [1.0]}))
                         for _ in range(requests))
        # within 5 standard deviations of n*p: a correct router fails this once in ~2 million runs
        bound = 5 * math.sqrt(requests * 0.2 * 0.8)
        assert abs(counts["2"] - requests * 0.2) <= bound, counts
        assert counts["1"] + counts["2"] == requests


def test_sticky_keys_keep_their_version_and_move_only_as_the_weights_say(tmp_path: Path) -> None:
    config = write_models(tmp_path / "models.toml", versioned((0.8, 0.2)))
    keys = [f"user-{i}" for i in range(300)]
    with running_server(config, env=ENV) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        def route(key: str) -> str:
            return served_by(http.post("/predict/echo", json={"inputs": [1.0]},
                                       headers={"X-Routing-Key": key}))

        before = {key: route(key) for key in keys}
        assert all(route(key) == before[key] for key in keys)  # while the weights stand
        assert 0 < sum(v == "2" for v in before.values()) < len(keys)
        changed = http.put("/v2/repository/models/echo/routing", headers=AUTH,
                           json={"weights": {"1": 0.5, "2": 0.5}})
        assert changed.status_code == 200, changed.text
        after = {key: route(key) for key in keys}
        moved = {key for key in keys if after[key] != before[key]}
        # a canary that grows only gains keys: none on version 2 goes back to 1
        assert all(before[key] == "1" and after[key] == "2" for key in moved)
        assert moved  # 30% of the keys, in expectation
        new = Routing((("1", 0.5), ("2", 0.5)))
        assert all(after[key] == new.pick(key_point("echo", key)) for key in keys)


def test_bad_routing_changes_are_refused_whole(tmp_path: Path) -> None:
    config = write_models(tmp_path / "models.toml", versioned((0.8, 0.2)))
    with running_server(config, env=ENV) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        url = "/v2/repository/models/echo/routing"
        before = http.get(url, headers=AUTH).json()
        assert before == {"name": "echo", "weights": {"1": 0.8, "2": 0.2}, "shadows": {}}
        for body, message in [
            ({"weights": {"1": 0.5, "2": 0.6}}, "weights must sum to 1 (a whole)"),
            ({"weights": {"1": 1.5, "2": -0.5}}, "weights must be finite numbers >= 0"),
            ({"weights": {"1": 0.5, "3": 0.5}},
             "model 'echo' has no versions ['3']; its versions: ['1', '2']"),
            ({"weights": {"1": 1.0}, "shadows": {"1": 0.5}}, "versions ['1'] take traffic"),
            ({"weights": {"1": 1.0}, "shadows": {"2": 1.5}}, "a shadow's fraction must be in (0, 1]"),
        ]:
            refused = http.put(url, headers=AUTH, json=body)
            assert refused.status_code == 400, (body, refused.text)
            assert message in refused.json()["error"]  # /v2 paths: the protocol's error shape
        assert http.put(url, headers=AUTH, json={"weights": "all"}).status_code == 422
        assert http.put(url, json={"weights": {"1": 1.0}}).status_code == 401
        assert http.get(url, headers=AUTH).json() == before  # nothing changed
        assert http.post("/v2/repository/models/echo/versions/9/promote", headers=AUTH).status_code == 404
        assert http.put("/v2/repository/models/plain/routing", headers=AUTH,
                        json={"weights": {"1": 1.0}}).status_code == 400
        assert http.post("/v2/repository/models/echo/rollback", headers=AUTH).status_code == 400
        promoted = http.post("/v2/repository/models/echo/versions/2/promote", headers=AUTH)
        assert promoted.json()["weights"] == {"1": 0.0, "2": 1.0}
        assert {served_by(http.post("/predict/echo", json={"inputs": [1.0]})) for _ in range(20)} == {"2"}
        rolled = http.post("/v2/repository/models/echo/rollback", headers=AUTH)
        assert rolled.status_code == 200 and rolled.json()["weights"] == {"1": 0.8, "2": 0.2}


def test_the_planner_measures_the_version_it_is_told_to(tmp_path: Path) -> None:
    from batchserve.cli import main

    config = write_models(tmp_path / "models.toml", versioned((0.5, 0.5)))
    inputs = tmp_path / "numbers.jsonl"
    inputs.write_text("1.0\n2.0\n")
    with running_server(config) as server:
        out = tmp_path / "report"
        assert main(["loadtest", "--url", server.url, "--model", "echo", "--version", "2",
                     "--inputs", str(inputs), "--requests", "60", "--warmup-s", "0",
                     "--concurrency", "2", "--out", str(out), "--no-progress"]) == 0
        report = json.loads((out / "report.json").read_text())
        assert (report["model"], report["version"]) == ("echo", "2")
        assert report["result"]["status_counts"] == {"200": 60}
        assert report["result"]["mean_batch_size"] >= 1  # read from version 2's own series
        assert sample(server.url, "batchserve_requests_total", model="echo", version="1", code="200") == 0
        assert sample(server.url, "batchserve_requests_total", model="echo", version="2", code="200") >= 60


def test_v2_statistics_of_one_version_and_of_the_model(tmp_path: Path) -> None:
    config = write_models(tmp_path / "models.toml", versioned((0.5, 0.5)))
    with running_server(config) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        for version, count in (("1", 3), ("2", 5)):
            for _ in range(count):
                answer = http.post(f"/predict/echo/versions/{version}", json={"inputs": [1.0]})
                assert answer.status_code == 200

        def successes(path: str) -> tuple[str, int]:
            [stats] = http.get(path).json()["model_stats"]
            return stats["version"], stats["inference_stats"]["success"]["count"]

        assert successes("/v2/models/echo/versions/1/stats") == ("1", 3)
        assert successes("/v2/models/echo/versions/2/stats") == ("2", 5)
        assert successes("/v2/models/echo/stats") == ("1", 8)  # every version's


def test_grpc_names_a_version_or_is_routed_by_its_key_as_rest_is(tmp_path: Path) -> None:
    import numpy as np
    import tritonclient.grpc as triton
    from tritonclient.utils import InferenceServerException

    from tests.support import free_port

    config = write_models(tmp_path / "models.toml", versioned(weights=(0.5, 0.5)))
    port = free_port()
    with running_server(config, env=ENV, args=["--grpc-port", str(port)]) as server, \
            httpx.Client(base_url=server.url, timeout=30) as http:
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        try:
            def infer(version: str = "", key: str | None = None) -> tuple[str, float]:
                tensor = triton.InferInput("input", [1], "FP64")
                tensor.set_data_from_numpy(np.array([1.0]))
                answer = client.infer("echo", [tensor], model_version=version,
                                      headers=None if key is None else {"x-routing-key": key})
                response = answer.get_response()
                return response.model_version, float(answer.as_numpy("output")[0])

            assert infer("1") == ("1", 2.0) and infer("2") == ("2", 3.0)
            with pytest.raises(InferenceServerException) as missing:
                infer("3")
            assert missing.value.status() == "StatusCode.NOT_FOUND"
            assert "its versions: ['1', '2']" in missing.value.message()
            assert client.get_model_metadata("echo", as_json=True)["versions"] == ["1", "2"]
            # A routing key in the call's metadata picks the version REST's header picks.
            for key in [f"user-{n}" for n in range(12)]:  # by chance alike: 1 in 4096
                rest = served_by(http.post("/predict/echo", json={"inputs": [1.0]},
                                           headers={"X-Routing-Key": key}))
                assert infer(key=key)[0] == rest, key
            # Triton's RepositoryModelLoad loads the model's versions as its entry now says.
            models = versioned((0.5, 0.5))
            models[0]["versions"].append({"version": "3", "options": {"scale": 4.0}})
            write_models(config, models)
            client.load_model("echo", headers={"authorization": f"Bearer {TOKEN}"})
            assert client.get_model_metadata("echo", as_json=True)["versions"] == ["1", "2", "3"]
            assert infer("3") == ("3", 4.0)
        finally:
            client.close()
