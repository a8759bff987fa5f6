"""Request bodies: the size limit, the read deadline (408) and the budget of in-flight body bytes
(503 before reading), in ``read_body`` itself and against a real server fed by raw sockets
that send most of a large body and stop."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from batchserve.bodies import CHUNKED_STEP_BYTES, AsgiChunks, BodyBudget, read_body
from batchserve.errors import (
    BodyBudgetFull,
    BodyTooLarge,
    MalformedRequest,
    RequestTimeout,
)
from starlette.types import Message

from tests.support import ServerProcess, running_server, write_models

MiB = 1024 * 1024


class Sender:
    """An ASGI ``receive`` that hands out the given chunks, then waits forever (a stalled client)."""

    def __init__(self, *chunks: bytes, complete: bool = True) -> None:
        self.chunks = list(chunks)
        self.complete = complete
        self.calls = 0

    async def __call__(self) -> Message:
        self.calls += 1
        if not self.chunks:
            await asyncio.Event().wait()
        chunk = self.chunks.pop(0)
        return {"type": "http.request", "body": chunk,
                "more_body": bool(self.chunks) or not self.complete}


def read(sender: Sender, declared: bytes | None, budget: BodyBudget, *, limit: int = 1000,
         timeout_s: float = 30.0) -> bytes:
    return asyncio.run(read_body(lambda: AsgiChunks(sender), declared, limit=limit, budget=budget,
                                 deadline_s=time.monotonic() + timeout_s))


def test_a_body_is_read_whole_and_its_reservation_released() -> None:
    budget = BodyBudget(10_000)
    assert read(Sender(b"ab", b"cd"), b"4", budget) == b"abcd"
    assert read(Sender(b"x" * 600, b"y" * 300), None, budget) == b"x" * 600 + b"y" * 300
    assert budget.reserved == 0


@pytest.mark.parametrize("declared", [b"1001", b"9" * 5000, b"0" * 3 + b"2000"])
def test_a_declared_length_over_the_limit_is_a_413_before_reading(declared: bytes) -> None:
    sender, budget = Sender(b"x"), BodyBudget(10_000)
    with pytest.raises(BodyTooLarge):
        read(sender, declared, budget)
    assert sender.calls == 0 and budget.reserved == 0


def test_a_length_padded_with_thousands_of_zeros_is_read_as_its_value() -> None:
    # int() refuses more than 4,300 digits (a ValueError, so a 500) even when most are zeros.
    budget = BodyBudget(10_000)
    assert read(Sender(b"ab"), b"0" * 4301 + b"2", budget) == b"ab"


def test_a_chunked_body_over_the_limit_is_a_413_without_reading_further() -> None:
    sender, budget = Sender(b"x" * 600, b"x" * 600, b"never read"), BodyBudget(10_000)
    with pytest.raises(BodyTooLarge):
        read(sender, None, budget)
    assert sender.calls == 2 and budget.reserved == 0


@pytest.mark.parametrize("declared", [b"-1", b"12a", b"\xc2\xb2", b"1 2", b""])
def test_a_malformed_content_length_is_a_422(declared: bytes) -> None:
    sender, budget = Sender(b"x"), BodyBudget(10_000)
    with pytest.raises(MalformedRequest, match="Content-Length"):
        read(sender, declared, budget)
    assert sender.calls == 0 and budget.reserved == 0


def test_a_body_past_the_budget_is_refused_with_503_before_reading() -> None:
    budget = BodyBudget(1500)
    budget.reserve(1000)  # another body being read
    sender = Sender(b"x" * 600)
    with pytest.raises(BodyBudgetFull) as refused:
        read(sender, b"600", budget)
    assert refused.value.status == 503 and refused.value.headers["Retry-After"]
    assert sender.calls == 0 and budget.reserved == 1000
    assert read(Sender(b"x" * 500), b"500", budget) == b"x" * 500  # what fits is read


def test_a_chunked_body_grows_its_reservation_and_is_refused_when_it_cannot() -> None:
    budget = BodyBudget(CHUNKED_STEP_BYTES + 100)
    big = b"x" * (CHUNKED_STEP_BYTES + 200)
    with pytest.raises(BodyBudgetFull):
        read(Sender(big), None, budget, limit=10 * CHUNKED_STEP_BYTES)
    assert budget.reserved == 0


def test_a_stalled_body_is_a_408_at_its_deadline_and_its_reservation_released() -> None:
    budget = BodyBudget(10_000)
    with pytest.raises(RequestTimeout) as late:
        read(Sender(b"x" * 10, complete=False), b"1000", budget, timeout_s=0.05)
    assert late.value.status == 408 and budget.reserved == 0


# -- against a real server -------------------------------------------------------------------

BUDGET = 64 * MiB
"""The server's BATCHSERVE_MAX_INFLIGHT_BODY_BYTES here: four bodies of the largest size."""


def server(tmp_path: Path, *, timeout_ms: float) -> ServerProcess:
    config = write_models(tmp_path / "models.toml", [
        {"name": "echo", "backend": "echo", "path": "x", "timeout_ms": timeout_ms}])
    process = ServerProcess(config, env={"BATCHSERVE_MAX_INFLIGHT_BODY_BYTES": str(BUDGET),
                                         "BATCHSERVE_MAX_BODY_BYTES": str(16 * MiB)})
    process.wait_ready()
    return process


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/PID/status")


class StalledUpload:
    """A raw connection that declares ``declared`` body bytes, sends ``sent`` of them and stops."""

    def __init__(self, port: int, declared: int, sent: int) -> None:
        self.port, self.declared, self.sent = port, declared, sent
        self.response: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.writer: asyncio.StreamWriter | None = None
        self.reading: asyncio.Task[None] | None = None

    async def start(self) -> None:
        reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write(b"POST /predict/echo HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                          b"content-length: %d\r\n\r\n" % self.declared)
        self.reading = asyncio.create_task(self._read(reader))  # a refusal can come while we send
        left = self.sent
        try:
            while left:
                step = min(left, MiB)
                self.writer.write(b" " * step)
                await self.writer.drain()
                left -= step
        except ConnectionError:
            pass  # refused: the server closed the connection without reading the rest

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            head = f"{type(exc).__name__}".encode()
        self.response.set_result(head)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def status(head: bytes) -> int | str:
    return int(head.split()[1]) if head.startswith(b"HTTP/1.1 ") else head.decode()


@pytest.mark.slow
def test_stalled_large_bodies_past_the_budget_are_refused_and_memory_stays_bounded(tmp_path: Path) -> None:
    # 48 clients each declare 16 MiB, send 16 MiB - 1 byte and stop. Before the budget the
    # server read them all: 48 x 16 MiB held until the (long) deadline.
    count = 48
    process = server(tmp_path, timeout_ms=600_000)
    try:
        baseline = rss_mib(process.process.pid)

        async def storm() -> tuple[list[Any], float, int]:
            uploads = [StalledUpload(process.port, 16 * MiB, 16 * MiB - 1) for _ in range(count)]
            try:
                await asyncio.gather(*(u.start() for u in uploads))
                # Every refusal has come once all but the budget's four have answered (a bound
                # for a server that refuses nothing, not a timing assertion).
                give_up = time.monotonic() + 60
                while (sum(u.response.done() for u in uploads) < count - BUDGET // (16 * MiB)
                       and time.monotonic() < give_up):
                    await asyncio.sleep(0.1)
                async with httpx.AsyncClient(base_url=process.url, timeout=30) as client:
                    health = (await client.get("/healthz")).status_code
                rss = rss_mib(process.process.pid)
                return [u.response.result() if u.response.done() else None for u in uploads], rss, health
            finally:
                for upload in uploads:
                    upload.close()

        heads, rss, health = asyncio.run(storm())
    finally:
        process.close()
    statuses = [status(h) if h is not None else "no answer" for h in heads]
    closed = ("ConnectionResetError", "BrokenPipeError")  # closed on a client still sending
    answered = [h for h in heads if h is not None and status(h) not in closed]
    assert health == 200
    # Refused: a 503 with Retry-After, answered before the body is read (a reset or a broken
    # pipe, as the server closes a connection whose body it will not read while the client still
    # sends, is a refusal too).
    stalled = BUDGET // (16 * MiB)
    assert statuses.count("no answer") == stalled, statuses  # the budget's four, still reading
    assert answered, statuses
    assert all(status(h) == 503 and b"retry-after: " in h.lower() for h in answered), \
        sorted(set(map(str, statuses)))
    # What the server holds: the budget's bodies, plus generous room for everything else.
    assert rss - baseline < BUDGET / MiB + 200, (baseline, rss)
    print(f"RSS {baseline:.0f} MiB -> {rss:.0f} MiB; {statuses}")


@pytest.mark.slow
def test_a_stalled_body_gets_408_at_its_deadline_and_frees_its_budget(tmp_path: Path) -> None:
    process = server(tmp_path, timeout_ms=1000)
    try:
        async def stall() -> tuple[list[int | str], int]:
            # Four stalled bodies take the whole budget; each is answered 408 at its deadline.
            uploads = [StalledUpload(process.port, 16 * MiB, 1000) for _ in range(BUDGET // (16 * MiB))]
            try:
                await asyncio.gather(*(u.start() for u in uploads))
                done, _ = await asyncio.wait([u.response for u in uploads], timeout=60)
                statuses = [status(u.response.result()) if u.response in done else "no answer"
                            for u in uploads]
            finally:
                for upload in uploads:
                    upload.close()
            # Released: a 16 MiB body fits again (it would be a 503 if the budget had leaked).
            async with httpx.AsyncClient(base_url=process.url, timeout=30) as client:
                body = b'{"inputs": [1]}'.ljust(16 * MiB)
                after = (await client.post("/predict/echo", content=body,
                                           headers={"content-type": "application/json"})).status_code
            return statuses, after

        statuses, after = asyncio.run(stall())
    finally:
        process.close()
    assert statuses == [408] * len(statuses)
    assert after == 200


def test_the_budget_must_hold_one_body_of_the_largest_size() -> None:
    from batchserve.settings import ServerSettings

    with pytest.raises(ValueError, match="max_inflight_body_bytes"):
        ServerSettings(max_body_bytes=2 * MiB, max_inflight_body_bytes=MiB)



@pytest.mark.slow
def test_connections_past_twice_limit_concurrency_wait_to_be_accepted(tmp_path: Path) -> None:
    # Requests past the limit are refused (tests/e2e/test_protocol.py); connections, idle ones
    # included, are held to twice it: one more waits to be accepted until another closes.
    config = write_models(tmp_path / "models.toml", [{"name": "echo", "backend": "echo", "path": "x"}])
    with running_server(config, env={"BATCHSERVE_LIMIT_CONCURRENCY": "2"}) as process:
        async def crowd() -> tuple[bool, int]:
            idle = [await asyncio.open_connection("127.0.0.1", process.port) for _ in range(4)]
            try:
                async with httpx.AsyncClient(base_url=process.url, timeout=30) as client:
                    waiting = asyncio.ensure_future(client.get("/healthz"))
                    done, _ = await asyncio.wait({waiting}, timeout=1.0)
                    idle.pop()[1].close()  # a place frees: the waiting connection is accepted
                    return bool(done), (await waiting).status_code
            finally:
                for _, writer in idle:
                    writer.close()

        answered_while_full, status_after = asyncio.run(crowd())
        assert not answered_while_full and status_after == 200


@pytest.mark.slow
def test_a_content_length_of_thousands_of_digits_is_answered_over_http(tmp_path: Path) -> None:
    # Zero-padded past int()'s 4,300 digits: a ValueError (500) before; now read as its value.
    body = b'{"inputs": [1]}'
    process = server(tmp_path, timeout_ms=10_000)
    try:
        async def send(length: bytes) -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", process.port)
            try:
                writer.write(b"POST /predict/echo HTTP/1.1\r\nhost: x\r\ncontent-type: application/json"
                             b"\r\ncontent-length: " + length + b"\r\n\r\n" + body)
                await writer.drain()
                return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            finally:
                writer.close()

        padded = asyncio.run(send(b"0" * 4301 + str(len(body)).encode()))
        huge = asyncio.run(send(b"9" * 4400))
    finally:
        process.close()
    assert status(padded) == 200, padded
    assert status(huge) in (400, 413), huge  # the server's parser refuses it (400) before we see it
