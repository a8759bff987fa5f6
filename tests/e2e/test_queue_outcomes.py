"""What happens to queued and running rows, against a real server, told by the outcome of each
request, the rows the model computed (the echo backend's record) and the server's own metrics:
a client that hangs up, a deadline that passes while its batch runs, a header that asks for more
time than the model allows, a full queue, and an unload with requests in flight.

Batches are held (the echo backend's ``holds``: a batch holding that row waits until a file
exists) rather than slowed, so that what a test sees does not depend on the machine's speed."""

from __future__ import annotations

import json
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import ServerProcess, running_server, sample, write_models

pytestmark = pytest.mark.slow

TOKEN = "correct-horse-battery-staple"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WAIT_S = 20.0
"""The longest a test waits for something the server should do soon (holds last up to 30 s)."""


class Served:
    """The server, and the files its models record computed rows in and wait on."""

    def __init__(self, process: ServerProcess, folder: Path) -> None:
        self.process = process
        self.url = process.url
        self.folder = folder

    def go(self, name: str) -> None:
        (self.folder / name).touch()

    def computed(self, model: str) -> Counter[float]:
        path = self.folder / f"{model}.rows"
        return Counter(float(line) for line in path.read_text().split()) if path.exists() else Counter()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("queue-outcomes")

    def echo(name: str, holds: dict[str, str], **settings: Any) -> dict[str, Any]:
        return {"name": name, "backend": "echo", "path": "x", "timeout_ms": 60_000, **settings,
                "options": {"holds": {row: str(folder / go) for row, go in holds.items()},
                            "record": str(folder / f"{name}.rows")}}

    config = write_models(folder / "models.toml", [
        echo("cancel", {"1": "cancel.go"}, max_batch_size=8),
        echo("deadline", {"1": "deadline-first.go", "5": "deadline-second.go"}, max_batch_size=4),
        echo("capped", {"1": "capped.go"}, timeout_ms=1000),
        echo("unload", {"1": "unload.go"}, max_batch_size=1),
        {"name": "decode", "backend": "slow-decode", "path": "x", "max_batch_size": 1, "max_queue": 1,
         "timeout_ms": 60_000, "options": {"holds": {"1": str(folder / "decode.go")}}},
    ])
    with running_server(config, env={"BATCHSERVE_MANAGEMENT_TOKEN": TOKEN}) as process:
        yield Served(process, folder)


def answered(url: str, model: str, code: int) -> float:
    return sample(url, "batchserve_requests_total", model=model, code=str(code))


def rejected(url: str, model: str, reason: str) -> float:
    return sample(url, "batchserve_rejected_total", model=model, reason=reason)


def queued(url: str, model: str) -> float:
    return sample(url, "batchserve_queue_rows", model=model)


def batches(url: str, model: str) -> float:
    return sample(url, "batchserve_batch_size_count", model=model)


def until(condition: Callable[[], bool], what: str) -> None:
    give_up = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < give_up, f"never: {what}"
        time.sleep(0.02)


def post(url: str, model: str, value: float, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{url}/predict", json={"model": model, "inputs": [value]}, headers=headers,
                      timeout=60)


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(8) as executor:
        yield executor


def dispatched_alone(served: Served, pool: ThreadPoolExecutor, model: str) -> Future[httpx.Response]:
    """Send the row 1 (held) and wait until its batch runs: the model's worker is then busy."""
    before = batches(served.url, model)
    held = pool.submit(post, served.url, model, 1)
    until(lambda: batches(served.url, model) == before + 1 and queued(served.url, model) == 0,
          f"{model}: the first batch ran")
    return held


def test_rows_of_clients_that_hung_up_are_never_computed(served: Served, pool: ThreadPoolExecutor) -> None:
    url = served.url
    held = dispatched_alone(served, pool, "cancel")
    sockets = []
    for value in (100, 101, 102, 103):  # queued behind the held batch, then hung up on
        body = json.dumps({"model": "cancel", "inputs": [value]}).encode()
        sock = socket.create_connection(("127.0.0.1", served.process.port))
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        sockets.append(sock)
    until(lambda: queued(url, "cancel") == 4, "the four rows were queued")
    for sock in sockets:
        sock.close()
    until(lambda: rejected(url, "cancel", "cancelled") == 4, "the hang-ups were noticed")
    assert queued(url, "cancel") == 0  # dropped from the queue, not left for the next batch
    served.go("cancel.go")
    assert held.result(WAIT_S).json()["outputs"] == [2.0]
    assert post(url, "cancel", 9).json()["outputs"] == [18.0]  # the queue drained past them
    assert served.computed("cancel") == Counter({1.0: 1, 9.0: 1})  # 100-103 never ran
    assert answered(url, "cancel", 499) == 4 and answered(url, "cancel", 200) == 2


def test_a_deadline_that_passes_while_its_batch_runs(served: Served, pool: ThreadPoolExecutor) -> None:
    url = served.url
    held = dispatched_alone(served, pool, "deadline")
    short = pool.submit(post, url, "deadline", 5, {"X-Request-Timeout-Ms": "5000"})
    mates = [pool.submit(post, url, "deadline", value) for value in (6, 7)]
    until(lambda: queued(url, "deadline") == 3, "the three rows were queued")
    rows_before = sample(url, "batchserve_batch_size_sum", model="deadline")
    served.go("deadline-first.go")  # the first batch ends; 5, 6 and 7 go together, and are held
    assert held.result(WAIT_S).status_code == 200
    until(lambda: sample(url, "batchserve_batch_size_sum", model="deadline") == rows_before + 3,
          "5, 6 and 7 ran in one batch")
    assert batches(url, "deadline") == 2
    response = short.result(WAIT_S)  # at its deadline, not once the batch is done: it still runs
    assert response.status_code == 504, response.text
    assert "while its rows ran" in response.json()["error"]["message"]
    assert not any(mate.done() for mate in mates)
    served.go("deadline-second.go")
    assert [mate.result(WAIT_S).json()["outputs"] for mate in mates] == [[12.0], [14.0]]
    assert served.computed("deadline") == Counter({1.0: 1, 5.0: 1, 6.0: 1, 7.0: 1})
    assert answered(url, "deadline", 504) == 1 and answered(url, "deadline", 200) == 3
    assert rejected(url, "deadline", "deadline") == 1


def test_a_timeout_header_cannot_raise_the_models_deadline(served: Served, pool: ThreadPoolExecutor) -> None:
    # timeout_ms is 1000; the header asks for a minute, over /predict and over v2
    url = served.url
    longer = {"X-Request-Timeout-Ms": "60000"}
    v2 = {"inputs": [{"name": "input", "shape": [1], "datatype": "FP64", "data": [1]}]}
    answers = [pool.submit(post, url, "capped", 1, longer),
               pool.submit(httpx.post, f"{url}/v2/models/capped/infer", json=v2, headers=longer,
                           timeout=60)]
    try:
        assert [answer.result(WAIT_S).status_code for answer in answers] == [504, 504]
    finally:
        served.go("capped.go")
    assert answered(url, "capped", 504) == 2  # v2's outcomes are counted as /predict's are
    response = httpx.post(f"{url}/v2/models/capped/infer", json=v2, timeout=60)
    assert response.status_code == 200 and response.json()["outputs"][0]["data"] == ["2.0"]
    assert answered(url, "capped", 200) == 1
    assert rejected(url, "capped", "deadline") == 2


def preprocessed(url: str, model: str) -> int:
    count: int = httpx.get(f"{url}/models/{model}", timeout=10).json()["preprocessed"]
    return count


def test_a_full_queue_refuses_before_preprocessing(served: Served, pool: ThreadPoolExecutor) -> None:
    # max_queue 1: one row running (held), one queued; the third is refused undecoded
    url = served.url
    held = dispatched_alone(served, pool, "decode")
    queued_one = pool.submit(post, url, "decode", 2)
    until(lambda: queued(url, "decode") == 1, "the second row was queued")
    assert preprocessed(url, "decode") == 2
    refused = post(url, "decode", 3)
    assert refused.status_code == 503, refused.text
    assert "max_queue" in refused.json()["error"]["message"]
    assert preprocessed(url, "decode") == 2  # the refused request's item was never preprocessed
    assert rejected(url, "decode", "queue_full") == 1 and answered(url, "decode", 503) == 1
    served.go("decode.go")
    assert [held.result(WAIT_S).status_code, queued_one.result(WAIT_S).status_code] == [200, 200]


def test_an_unload_finishes_the_requests_in_flight(served: Served, pool: ThreadPoolExecutor) -> None:
    url = served.url
    assert sample(url, "batchserve_model_ready", model="unload") == 1
    running = dispatched_alone(served, pool, "unload")
    waiting = pool.submit(post, url, "unload", 2)
    until(lambda: queued(url, "unload") == 1, "the second row was queued")
    unload = pool.submit(httpx.post, f"{url}/v2/repository/models/unload/unload", headers=AUTH,
                         timeout=60)
    until(lambda: httpx.get(f"{url}/models/unload").json()["state"] == "unloaded", "unloading")
    late = post(url, "unload", 3)
    assert late.status_code == 503 and "unloaded" in late.json()["error"]["message"]
    assert not running.done() and not waiting.done() and not unload.done()
    served.go("unload.go")
    assert running.result(WAIT_S).json()["outputs"] == [2.0]
    assert waiting.result(WAIT_S).json()["outputs"] == [4.0]
    assert unload.result(WAIT_S).json()["state"] == "UNLOADED"
    assert served.computed("unload") == Counter({1.0: 1, 2.0: 1})
    assert sample(url, "batchserve_model_ready", model="unload") == 0
    assert answered(url, "unload", 200) == 2 and answered(url, "unload", 503) == 1
    assert httpx.get(f"{url}/readyz").status_code == 200  # unloaded on purpose: still ready
