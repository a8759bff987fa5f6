"""``--workers N`` against real servers: one port and one readiness for N processes, a worker
killed under load restarted while the others answer, SIGTERM with every worker busy answering
everything admitted, and a crash loop ending the server with status 1."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psutil

from tests.support import ServerProcess, running_server, sample, write_models


def echo(tmp_path: Path, **options: Any) -> Path:
    return write_models(tmp_path / "models.toml", [
        {"name": "echo", "backend": "echo", "path": str(tmp_path), "max_batch_size": 4,
         "max_wait_ms": 1, "max_queue": 256, "timeout_ms": 30_000, "options": options}])


def workers(server: ServerProcess) -> list[psutil.Process]:
    children: list[psutil.Process] = psutil.Process(server.process.pid).children()
    return children


def poll(check: Any, timeout_s: float = 60.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what or check}")


def not_ready(server: ServerProcess) -> bool:
    """``/readyz`` is 503, or the port no longer takes connections (a drain has closed it)."""
    try:
        return httpx.get(f"{server.url}/readyz").status_code == 503
    except httpx.TransportError:
        return True


def test_two_workers_serve_one_port_and_are_ready_together(tmp_path: Path) -> None:
    with running_server(echo(tmp_path), args=["--workers", "2"]) as server:
        assert len(workers(server)) == 2
        ready = httpx.get(f"{server.url}/readyz")
        assert ready.status_code == 200
        assert list(ready.json()["workers"].values()) == ["ready"]  # the other worker's
        with httpx.Client(base_url=server.url) as client:
            for value in range(20):
                answer = client.post("/predict/echo", json={"inputs": [value]})
                assert answer.json()["outputs"] == [2 * value]
        assert httpx.get(f"{server.url}/healthz").json() == {"status": "alive"}
        # the log reads as one server: each worker says where it serves once, and never its
        # peers' Unix socket (an internal detail)
        serving = [line for line in server.output().splitlines() if "serving on" in line]
        assert len(serving) == 2 and all(server.url in line for line in serving), serving
        assert ".sock" not in server.output()


def test_a_worker_killed_under_load_is_restarted_while_the_others_answer(tmp_path: Path) -> None:
    with running_server(echo(tmp_path, delay_ms=2), args=["--workers", "2"]) as server:
        victim = workers(server)[0]
        outcomes: Counter[str] = Counter()
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(base_url=server.url, timeout=30) as client:
                while not stop.is_set():
                    try:
                        answer = client.post("/predict/echo", json={"inputs": [1]})
                        outcomes[str(answer.status_code)] += 1
                    except httpx.TransportError:  # in flight on the worker that died
                        outcomes["connection error"] += 1

        clients = [threading.Thread(target=load) for _ in range(8)]
        try:
            for thread in clients:
                thread.start()
            poll(lambda: outcomes["200"] > 100, what="load before the kill")
            victim.kill()
            # the server says it is not ready while the worker is gone, then ready again
            poll(lambda: httpx.get(f"{server.url}/readyz").status_code == 503, what="not ready")
            poll(lambda: httpx.get(f"{server.url}/readyz").status_code == 200, what="ready again")
            before = outcomes["200"]
            poll(lambda: outcomes["200"] > before + 100, what="load after the restart")
        finally:  # whatever failed above, the load stops: threads left running kept pytest alive
            stop.set()
            for thread in clients:
                if thread.is_alive():
                    thread.join(timeout=60)  # a request's own timeout is 30 s
        assert not [thread for thread in clients if thread.is_alive()]
        assert set(outcomes) <= {"200", "connection error"}, outcomes
        # only what was in flight on the dead worker failed: at most one request per client
        assert outcomes["connection error"] <= len(clients), outcomes
        pids = {p.pid for p in workers(server)}
        assert len(pids) == 2 and victim.pid not in pids
        assert "was killed by SIGKILL; restarting it" in server.output()


def test_sigterm_with_every_worker_busy_answers_everything_admitted(tmp_path: Path) -> None:
    started, release = tmp_path / "started", tmp_path / "release"
    config = echo(tmp_path, started=str(started), hold_until=str(release))
    server = ServerProcess(config, grace_s=30, args=["--workers", "2"])
    clients: list[threading.Thread] = []
    try:
        server.wait_ready()
        answers: list[int] = []

        def ask(value: int) -> None:
            with httpx.Client(base_url=server.url, timeout=60) as client:
                answers.append(client.post("/predict/echo", json={"inputs": [value]}).status_code)

        # 24 connections: the kernel spreads them over both workers (all on one: 2 ** -23)
        clients.extend(threading.Thread(target=ask, args=(v,)) for v in range(24))
        for thread in clients:
            thread.start()

        def busy() -> bool:  # a batch held in each worker
            lines = started.read_text().split("\n") if started.exists() else []
            return len({line.split()[0] for line in lines if line}) == 2

        poll(busy, what="a batch running in each worker")
        time.sleep(0.5)  # the rest of the requests reach their worker's queue (not asserted on)
        server.process.send_signal(signal.SIGTERM)
        poll(lambda: not_ready(server), what="draining")
        release.touch()
        for thread in clients:
            thread.join()
        assert server.process.wait(timeout=60) == 0
        assert answers.count(200) == 24, Counter(answers)
        assert len(started.read_text().split()) == 2 * 24
    finally:
        release.touch()
        server.close()
        for thread in clients:  # each ends with its answer, or an error once the server is gone
            if thread.is_alive():
                thread.join(timeout=60)


def test_a_crash_loop_ends_the_server_with_status_1(tmp_path: Path) -> None:
    server = ServerProcess(echo(tmp_path, exit_on_load=3), args=["--workers", "2"])
    try:
        assert server.process.wait(timeout=120) == 1
        assert "exited with status 3" in server.output()
        assert "a crash loop; stopping the server" in server.output()
    finally:
        server.close()


def test_new_connections_reach_every_worker(tmp_path: Path) -> None:
    started = tmp_path / "started"
    with running_server(echo(tmp_path, started=str(started)), args=["--workers", "2"]) as server:
        def both() -> bool:
            with httpx.Client(base_url=server.url) as client:  # a new connection each time
                client.post("/predict/echo", json={"inputs": [1]})
            return len({line.split()[0] for line in started.read_text().splitlines()}) == 2

        poll(both, what="requests on both workers")


def test_metrics_after_k_requests_over_the_workers_show_exactly_k(tmp_path: Path) -> None:
    started = tmp_path / "started"
    with running_server(echo(tmp_path, started=str(started)), args=["--workers", "2"]) as server:
        for value in range(40):  # a new connection each: the kernel spreads them
            assert httpx.post(f"{server.url}/predict/echo", json={"inputs": [value]}).status_code == 200
        per_pid = Counter(line.split()[0] for line in started.read_text().splitlines())
        assert len(per_pid) == 2, per_pid  # both workers served some (all on one: 2 ** -39)
        for _ in range(6):  # whichever worker answers the scrape
            assert sample(server.url, "batchserve_requests_total", model="echo", code="200") == 40
            assert sample(server.url, "batchserve_batch_size_count", model="echo") == 40
            assert sample(server.url, "batchserve_model_ready", model="echo") == 1
        per_worker = httpx.get(f"{server.url}/metrics", params={"per_worker": "true"}).text
        values = {}
        for line in per_worker.splitlines():
            if line.startswith("batchserve_requests_total{") and 'model="echo"' in line:
                values[line.split('worker="')[1].split('"')[0]] = float(line.rsplit(" ", 1)[1])
        # each worker's own count: the rows its batches started (warmup is not recorded)
        assert sorted(values.values()) == sorted(per_pid.values()), (values, per_pid)
        assert set(values) == {"0", "1"}  # labelled by worker index
