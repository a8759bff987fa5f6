"""Management through any worker applies to all of them, against 2 real worker processes:
a PATCH through one shows on the other; a load that fails on one leaves both serving the old
version; a reload under load answers every request; a worker restarted after a change comes
up with it; the token is still required on every worker."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.support import running_server, sample, write_models
from tests.support.cluster import running_workers

pytestmark = pytest.mark.slow

TOKEN = "correct-horse-battery-staple"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ENV = {0: {"BATCHSERVE_MANAGEMENT_TOKEN": TOKEN}, 1: {"BATCHSERVE_MANAGEMENT_TOKEN": TOKEN}}


def _echo(**options: Any) -> list[dict[str, Any]]:
    return [{"name": "echo", "backend": "echo", "path": "x", "max_batch_size": 8, "options": options}]


def _config(url: str) -> dict[str, Any]:
    model = httpx.get(f"{url}/models/echo", timeout=10).json()
    assert model["state"] == "ready", model
    config: dict[str, Any] = model["config"]
    return config


def test_a_patch_through_one_worker_shows_on_every_worker(tmp_path: Path) -> None:
    config = write_models(tmp_path / "models.toml", _echo())
    with running_workers(config, env=ENV) as workers, httpx.Client(timeout=30) as client:
        patched = client.patch(f"{workers.urls[0]}/models/echo/config", headers=AUTH,
                               json={"max_batch_size": 3, "max_wait_ms": 2})
        assert patched.status_code == 200, patched.text
        assert patched.json()["workers"] == {"applied": [0, 1], "missed": {}}
        for url in workers.urls:
            for _ in range(20):  # whichever request reaches it
                assert (_config(url)["max_batch_size"], _config(url)["max_wait_ms"]) == (3, 2)
        # ... and outlives a reload through the other worker, on both.
        loaded = client.post(f"{workers.urls[1]}/v2/repository/models/echo/load", headers=AUTH)
        assert loaded.status_code == 200, loaded.text
        assert [_config(url)["max_batch_size"] for url in workers.urls] == [3, 3]


def test_a_load_that_fails_on_one_worker_leaves_every_worker_serving_the_old_version(
        tmp_path: Path) -> None:
    config = write_models(tmp_path / "models.toml", _echo())
    env = {1: {**ENV[1], "ECHO_FAIL_HERE": "1"}, 0: ENV[0]}
    with running_workers(config, env=env) as workers, httpx.Client(timeout=30) as client:
        write_models(config, _echo(fail_load_in_env="ECHO_FAIL_HERE", delay_ms=1))
        for url in workers.urls:  # through either worker, whichever one fails
            failed = client.post(f"{url}/v2/repository/models/echo/load", headers=AUTH)
            assert failed.status_code == 409, failed.text
            error = failed.json()["error"]  # v2's shape: the message alone
            assert "worker 1: told to fail at load where ECHO_FAIL_HERE is set" in error
            assert "worker 0" not in error
            for every in workers.urls:  # the old version (no options) serves on every worker
                assert _config(every)["options"] == {}
                answer = client.post(f"{every}/predict/echo", json={"inputs": [1, 2]})
                assert answer.json()["outputs"] == [2.0, 4.0]
            # The copy staged on the worker that succeeded was unloaded (aborted), not kept.
            copies = [client.get(f"{every}/models/echo").json()["copies_loaded"]
                      for every in workers.urls]
            assert copies == [1, 1]


def test_a_reload_under_load_answers_every_request(tmp_path: Path) -> None:
    config = write_models(tmp_path / "models.toml", _echo(delay_ms=2))
    with running_workers(config, env=ENV) as workers:
        codes: list[int] = []
        stop = threading.Event()

        def load(url: str) -> None:
            with httpx.Client(timeout=30) as client:
                while not stop.is_set():
                    codes.append(client.post(f"{url}/predict/echo", json={"inputs": [1]}).status_code)

        threads = [threading.Thread(target=load, args=(url,)) for url in workers.urls for _ in range(4)]
        for thread in threads:
            thread.start()
        try:
            with httpx.Client(timeout=60) as client:
                for round_ in range(3):
                    write_models(config, _echo(delay_ms=2 + round_))
                    reloaded = client.post(f"{workers.urls[round_ % 2]}/v2/repository/models/echo/load",
                                           headers=AUTH)
                    assert reloaded.status_code == 200, reloaded.text
                    assert reloaded.json()["workers"] == {"applied": [0, 1], "missed": {}}
                    assert [_config(url)["options"] for url in workers.urls] == [
                        {"delay_ms": 2 + round_}] * 2
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
        assert codes and set(codes) == {200}, {code: codes.count(code) for code in set(codes)}


def test_a_worker_restarted_after_changes_comes_up_with_them(tmp_path: Path) -> None:
    config = write_models(tmp_path / "models.toml", [
        *_echo(), {"name": "other", "backend": "echo", "path": "x"}])
    with running_workers(config, env=ENV) as workers, httpx.Client(timeout=30) as client:
        workers.kill(1)
        # Worker 1 is down: the change goes through on worker 0 and says whom it missed.
        patched = client.patch(f"{workers.urls[0]}/models/echo/config", headers=AUTH,
                               json={"max_batch_size": 5})
        assert patched.status_code == 200, patched.text
        report = patched.json()["workers"]
        assert report["applied"] == [0] and "not reachable" in report["missed"]["1"]
        assert client.post(f"{workers.urls[0]}/v2/repository/models/other/unload",
                           headers=AUTH).status_code == 200
        # A load needs every worker: refused, naming the one it could not reach.
        refused = client.post(f"{workers.urls[0]}/v2/repository/models/echo/load", headers=AUTH)
        assert refused.status_code == 409 and "worker 1: not reachable" in refused.text
        workers.start(1)
        workers.wait_loaded(1)
        assert _config(workers.urls[1])["max_batch_size"] == 5
        # Known there as unloaded, as on worker 0: the same answers whichever worker serves.
        for url in workers.urls:
            shown = client.get(f"{url}/models/other")
            assert shown.status_code == 200 and shown.json()["state"] == "unloaded", shown.text
            refused = client.post(f"{url}/predict/other", json={"inputs": [3]})
            assert refused.status_code == 503 and "unloaded" in refused.text, refused.text
        assert client.post(f"{workers.urls[1]}/predict/echo", json={"inputs": [3]}).json()[
            "outputs"] == [6.0]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token-wrong-token"},
                                     {"Authorization": f"Basic {TOKEN}"}])
def test_every_worker_still_requires_the_token(tmp_path: Path, headers: dict[str, str]) -> None:
    config = write_models(tmp_path / "models.toml", _echo())
    with running_workers(config, env=ENV) as workers, httpx.Client(timeout=30) as client:
        for url in workers.urls:
            for method, path in (("PATCH", "/models/echo/config"),
                                 ("POST", "/v2/repository/models/echo/load"),
                                 ("POST", "/v2/repository/models/echo/unload")):
                response = client.request(method, f"{url}{path}", headers=headers,
                                          json={"max_batch_size": 1})
                assert response.status_code == 401, (url, path, response.text)
        for url in workers.urls:  # nothing changed anywhere
            assert _config(url)["max_batch_size"] == 8


def test_through_the_one_port_of_a_real_server_a_patch_shows_on_every_worker(tmp_path: Path) -> None:
    config = write_models(tmp_path / "models.toml", _echo())
    with running_server(config, args=["--workers", "2"],
                        env={"BATCHSERVE_MANAGEMENT_TOKEN": TOKEN}) as server:
        patched = httpx.patch(f"{server.url}/models/echo/config", headers=AUTH,
                              json={"max_batch_size": 3}, timeout=30)
        assert patched.status_code == 200, patched.text
        assert patched.json()["workers"] == {"applied": [0, 1], "missed": {}}
        for _ in range(40):  # a connection each: the kernel spreads them over both workers
            assert _config(server.url)["max_batch_size"] == 3
        for _ in range(20):  # 8 rows each, over both workers: every batch now holds at most 3
            answer = httpx.post(f"{server.url}/predict/echo", json={"inputs": list(range(8))}, timeout=30)
            assert answer.status_code == 200
        batches = sample(server.url, "batchserve_batch_size_count", model="echo")
        assert sample(server.url, "batchserve_batch_size_sum", model="echo") == 160  # warmups aside
        assert batches >= 160 / 3
        assert sample(server.url, "batchserve_batch_size_bucket", model="echo", le="4.0") == batches
        assert sample(server.url, "batchserve_batch_size_bucket", model="echo", le="2.0") < batches
        # Each worker, asked on its own peer socket (the run directory is on its command line).
        cmdline = psutil.Process(server.process.pid).children()[0].cmdline()
        run_dir = Path(cmdline[cmdline.index("--run-dir") + 1])
        for index in (0, 1):
            peer = httpx.HTTPTransport(uds=str(run_dir / "workers" / f"{index}.sock"))
            with httpx.Client(transport=peer) as worker:
                status = worker.get("http://worker/peer/status").json()
            assert status["index"] == index
            assert status["models"]["echo"]["config"]["max_batch_size"] == 3
        reloaded = httpx.post(f"{server.url}/v2/repository/models/echo/load", headers=AUTH, timeout=60)
        assert reloaded.status_code == 200 and reloaded.json()["workers"]["applied"] == [0, 1]
