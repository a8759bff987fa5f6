"""Overload, faults and SIGTERM under load, against a real server, with an exact account of
every request: each admitted one answered exactly once, nothing lost, nothing hung."""

from __future__ import annotations

import asyncio
import random
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support import ServerProcess, sample, write_models

pytestmark = pytest.mark.slow


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def recorded(path: Path) -> Counter[float]:
    return Counter(float(line) for line in path.read_text().split()) if path.exists() else Counter()


def test_open_loop_overload_at_twice_capacity(tmp_path: Path) -> None:
    record = tmp_path / "computed.txt"
    # capacity ~ 4 rows / 40 ms = 100 rows/s; offered: 200 requests/s for 4 s
    config = write_models(tmp_path / "models.toml", [{
        "name": "slow", "backend": "echo", "path": "x", "max_batch_size": 4, "max_queue": 20,
        "timeout_ms": 1000, "options": {"delay_ms": 40, "record": str(record)}}])
    server = ServerProcess(config)
    try:
        server.wait_ready()
        baseline = rss_kib(server.process.pid)
        results: list[tuple[int, int, str | None]] = []

        async def load() -> None:
            rng = random.Random(1)
            limits = httpx.Limits(max_connections=500, max_keepalive_connections=500)
            async with httpx.AsyncClient(base_url=server.url, timeout=3.0, limits=limits) as client:
                async def one(value: int) -> None:
                    response = await client.post("/predict", json={"model": "slow", "inputs": [value]})
                    results.append((value, response.status_code, response.headers.get("retry-after")))
                tasks = []
                deadline = time.monotonic() + 4.0
                value = 1
                while time.monotonic() < deadline:
                    tasks.append(asyncio.create_task(one(value)))
                    value += 1
                    await asyncio.sleep(rng.expovariate(200.0))
                await asyncio.gather(*tasks)  # a client timeout (3 s: none hung) would raise here

        asyncio.run(load())
        statuses = Counter(status for _, status, _ in results)
        assert set(statuses) <= {200, 503, 504}, statuses
        assert statuses[200] > 0 and statuses[503] > 0, statuses
        assert all(retry == "1" for _, status, retry in results if status == 503)
        computed = recorded(record)
        answered = [value for value, status, _ in results if status == 200]
        assert all(computed[value] == 1 for value in answered)  # each answered exactly once
        refused = [value for value, status, _ in results if status == 503]
        assert not any(computed[value] for value in refused)  # refused rows never ran
        assert max(computed.values()) == 1
        time.sleep(0.5)
        assert rss_kib(server.process.pid) < baseline + 50 * 1024  # memory back near its baseline
        assert httpx.get(f"{server.url}/readyz").status_code == 200
    finally:
        server.close()


def until(condition: Callable[[], bool], what: str) -> None:
    give_up = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < give_up, f"never: {what}"
        time.sleep(0.02)


def test_faults_disconnects_and_sigterm_under_load(tmp_path: Path) -> None:
    # Every batch waits for the file go, so that the 40 requests are all admitted, and the
    # hang-ups all queued, before SIGTERM: none of it depends on the machine's speed.
    record, go = tmp_path / "computed.txt", tmp_path / "go"
    config = write_models(tmp_path / "models.toml", [{
        "name": "slow", "backend": "echo", "path": "x", "max_batch_size": 4,
        "options": {"hold_until": str(go), "fail_on": 13.0, "record": str(record)}}])
    server = ServerProcess(config, grace_s=20)
    try:
        server.wait_ready()
        url = server.url
        answers: dict[int, list[int | str]] = {}
        lock = threading.Lock()

        def ask(value: int) -> None:
            try:
                response = httpx.post(f"{url}/predict", json={"model": "slow", "inputs": [value]},
                                      timeout=30)
                outcome: int | str = response.status_code
                if response.status_code == 200:
                    assert response.json()["outputs"] == [2.0 * value]
            except httpx.TransportError as exc:
                outcome = type(exc).__name__
            with lock:
                answers.setdefault(value, []).append(outcome)

        def hang_up(value: int) -> None:
            body = f'{{"model": "slow", "inputs": [{value}]}}'.encode()
            with socket.create_connection(("127.0.0.1", server.port)) as sock:
                sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
                time.sleep(0.1)

        def admitted() -> float:  # rows running or run, and rows queued
            return (sample(url, "batchserve_batch_size_sum", model="slow")
                    + sample(url, "batchserve_queue_rows", model="slow"))

        clients = [threading.Thread(target=ask, args=(v,)) for v in range(40)]
        for thread in clients:
            thread.start()
        until(lambda: admitted() == 40, "the 40 requests were admitted")
        hang_ups = [threading.Thread(target=hang_up, args=(v,)) for v in range(100, 106)]
        for thread in hang_ups:
            thread.start()
        for thread in hang_ups:
            thread.join(30)
        # queued behind held batches, they can only have been dropped, and answered 499
        until(lambda: sample(url, "batchserve_requests_total", model="slow", code="499") == 6,
              "the six hang-ups were noticed")
        server.terminate()  # SIGTERM with most of the work still queued
        late = [threading.Thread(target=ask, args=(v,)) for v in range(200, 205)]
        for thread in late:
            thread.start()
        for thread in late:
            thread.join(60)

        # let the batches go only once the server waits for the requests in flight (or, with no
        # grace, has cancelled them): then the answers show the drain, not a race with it
        until(lambda: re.search("draining: the listeners are closed|cancelling .* still running",
                                server.output()) is not None, "the drain waits")
        with pytest.raises(httpx.ConnectError):  # and new connections are refused
            httpx.get(f"{url}/healthz", timeout=5)
        go.touch()
        for thread in clients:
            thread.join(60)
        assert server.process.wait(timeout=30) == 0
        computed = recorded(record)
        for value in range(40):
            assert answers[value] == [400 if value == 13 else 200], (value, answers[value])  # once
            assert computed[value] == (0 if value == 13 else 1), value
        for value in range(100, 106):
            assert computed[value] == 0  # hung up while queued: never computed
        for value in range(200, 205):
            [outcome] = answers[value]
            assert outcome == 503 or isinstance(outcome, str)  # refused after SIGTERM
            assert computed[value] == 0
    finally:
        go.touch()
        server.close()
