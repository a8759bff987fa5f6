"""``grpc.health.v1.Health`` against a real server's gRPC port, with grpcio-health-checking's own
stubs: ``Watch`` streams the status at once and then each change (a model held loading, then
loaded; unloaded and loaded again through management; a name that becomes a model), answers
SERVICE_UNKNOWN for a name that is no model without ending, ends when the server drains (so
that the drain is not held), follows the other workers' readiness, and is answered by every
worker of several."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support import ServerProcess, free_port, running_server, write_models
from tests.support.cluster import Workers

pytestmark = pytest.mark.slow

TOKEN = "correct-horse-battery-staple"
AUTH = {"authorization": f"Bearer {TOKEN}"}
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
WATCH_S = 60.0
"""A watch's gRPC deadline: one that does not end when it should fails the case with
DEADLINE_EXCEEDED, not a hang."""
ECHO = {"name": "echo", "backend": "echo", "path": "x"}


def _channel(target: str) -> grpc.Channel:
    """A channel on a connection of its own (gRPC shares connections between a process's
    channels unless told not to), so that each reaches whichever worker the kernel picks."""
    return grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])


def _stub(channel: grpc.Channel) -> Any:
    """grpcio-health-checking's client stub (its type stubs name none of its methods)."""
    return health_pb2_grpc.HealthStub(channel)


def _watch(channel: grpc.Channel, service: str) -> Any:
    return _stub(channel).Watch(health_pb2.HealthCheckRequest(service=service), timeout=WATCH_S,
                                wait_for_ready=True)


def _statuses(watch: Any, count: int) -> list[int]:
    return [next(watch).status for _ in range(count)]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[ServerProcess, str, Path]]:
    """A server of the echo model and of a model that failed to load, its gRPC target, and its
    repository file."""
    config = write_models(tmp_path / "models.toml", [
        ECHO, {"name": "broken", "backend": "echo", "path": "x", "options": {"fail_load": True}}])
    port = free_port()
    with running_server(config, args=["--grpc-port", str(port), "--strict-readiness", "false"],
                        env={"BATCHSERVE_MANAGEMENT_TOKEN": TOKEN}) as server:
        yield server, f"127.0.0.1:{port}", config


def test_a_models_watch_follows_its_unload_and_load(served: tuple[ServerProcess, str, Path]) -> None:
    _, target, _ = served
    with _channel(target) as channel, triton.InferenceServerClient(target) as client:
        watch = _watch(channel, "echo")
        server = _watch(channel, "")
        try:
            assert _statuses(watch, 1) == [SERVING]
            assert _statuses(server, 1) == [SERVING]
            client.unload_model("echo", headers=AUTH)
            assert _statuses(watch, 1) == [NOT_SERVING]
            client.load_model("echo", headers=AUTH)
            assert _statuses(watch, 1) == [SERVING]
            assert _statuses(_watch(channel, "broken"), 1) == [NOT_SERVING]  # failed to load
            check = _stub(channel).Check
            assert check(health_pb2.HealthCheckRequest(service="echo"), timeout=30).status == SERVING
            assert check(health_pb2.HealthCheckRequest(service="broken"), timeout=30).status == NOT_SERVING
        finally:
            watch.cancel()
            server.cancel()


def test_an_unknown_service_is_unknown_until_it_becomes_a_model(
        served: tuple[ServerProcess, str, Path]) -> None:
    _, target, config = served
    with _channel(target) as channel, triton.InferenceServerClient(target) as client:
        check = _stub(channel).Check
        with pytest.raises(grpc.RpcError) as unknown:
            check(health_pb2.HealthCheckRequest(service="later"), timeout=30)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        watch = _watch(channel, "later")
        try:
            assert _statuses(watch, 1) == [UNKNOWN]  # and the stream goes on
            write_models(config, [ECHO, {**ECHO, "name": "later"}])
            client.load_model("later", headers=AUTH)
            assert _statuses(watch, 1) == [SERVING]
        finally:
            watch.cancel()


def test_the_servers_watch_follows_loading_and_ends_when_it_drains(tmp_path: Path) -> None:
    loaded = tmp_path / "loaded"
    config = write_models(tmp_path / "models.toml", [{**ECHO, "options": {"load_until": str(loaded)}}])
    port = free_port()
    # a grace longer than a watch's deadline: a watch left open would hold the drain past it
    server = ServerProcess(config, args=["--grpc-port", str(port)], grace_s=2 * WATCH_S)
    try:
        with _channel(f"127.0.0.1:{port}") as channel:
            watches = [_watch(channel, service) for service in ("", "inference.GRPCInferenceService", "echo")]
            assert [_statuses(w, 1) for w in watches] == [[NOT_SERVING]] * 3  # the model is loading
            loaded.touch()
            assert [_statuses(w, 1) for w in watches] == [[SERVING]] * 3
            # Each watch is read from before the drain: grpcio's blocking iterator stops at a status
            # it has already received, even with a message not yet read (grpc/grpc#13506), so a read
            # started after both arrived could miss the last message the server did send.
            with ThreadPoolExecutor(len(watches)) as pool:
                rest = [pool.submit(list, watch) for watch in watches]
                time.sleep(0.5)  # each reader waiting for its next message
                server.process.send_signal(signal.SIGTERM)
                for read, watch in zip(rest, watches, strict=True):
                    ended = read.result(timeout=WATCH_S)
                    assert ended == [health_pb2.HealthCheckResponse(status=NOT_SERVING)]
                    assert watch.code() == grpc.StatusCode.OK
        assert server.process.wait(timeout=WATCH_S) == 0
    finally:
        loaded.touch()
        server.close()


def test_every_worker_answers_its_watches(tmp_path: Path) -> None:
    config = write_models(tmp_path / "models.toml", [ECHO])
    port = free_port()
    target = f"127.0.0.1:{port}"
    channels = [_channel(target) for _ in range(8)]  # on both workers, but for 1 time in 2 ** 7
    watches: list[Any] = []
    try:
        with running_server(config, args=["--workers", "2", "--grpc-port", str(port)],
                            env={"BATCHSERVE_MANAGEMENT_TOKEN": TOKEN}) as server:
            watches = [_watch(channel, "echo") for channel in channels]
            assert [_statuses(w, 1) for w in watches] == [[SERVING]] * len(watches)
            with triton.InferenceServerClient(target) as client:
                client.unload_model("echo", headers=AUTH)  # on every worker
            assert [_statuses(w, 1) for w in watches] == [[NOT_SERVING]] * len(watches)
            server.stop(timeout_s=WATCH_S)
            for watch in watches:  # each worker's drain ended its watches
                assert list(watch) == [] and watch.code() == grpc.StatusCode.OK
    finally:
        for watch in watches:
            watch.cancel()
        for channel in channels:
            channel.close()


def test_the_servers_watch_follows_the_other_workers_readiness(tmp_path: Path) -> None:
    """Worker 0 of two (the tests' own workers, each on ports of its own) says the server is not
    ready while worker 1 is not running, ready once it is, and not ready once it is killed: what
    it reads from worker 1's status file, which nothing notifies."""
    workers = Workers(write_models(tmp_path / "models.toml", [ECHO]), 2, {}, grpc=True)
    try:
        workers.start(0)
        workers.wait_loaded(0)
        with _channel(f"127.0.0.1:{workers.grpc_ports[0]}") as channel:
            watch = _watch(channel, "")
            try:
                assert _statuses(watch, 1) == [NOT_SERVING]  # worker 1 is not running
                workers.start(1)
                workers.wait_loaded(1)
                assert _statuses(watch, 1) == [SERVING]
                workers.kill(1)
                assert _statuses(watch, 1) == [NOT_SERVING]
            finally:
                watch.cancel()
    finally:
        workers.close()


def test_watches_past_the_concurrency_limit_are_refused(tmp_path: Path) -> None:
    config = write_models(tmp_path / "models.toml", [ECHO])
    port = free_port()
    with running_server(config, args=["--grpc-port", str(port)],
                        env={"BATCHSERVE_LIMIT_CONCURRENCY": "2"}), _channel(f"127.0.0.1:{port}") as channel:
        watches = [_watch(channel, "echo") for _ in range(2)]
        try:
            assert [_statuses(w, 1) for w in watches] == [[SERVING]] * 2
            with pytest.raises(grpc.RpcError) as refused:
                _statuses(_watch(channel, "echo"), 1)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "BATCHSERVE_LIMIT_CONCURRENCY" in str(refused.value.details())
            watches.pop().cancel()  # one ends: another may open, once the server has seen it end
            deadline = time.monotonic() + 30
            while True:
                watches.append(_watch(channel, ""))
                try:
                    assert _statuses(watches[-1], 1) == [SERVING]
                    break
                except grpc.RpcError as error:
                    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() < deadline
                    time.sleep(0.05)
        finally:
            for watch in watches:
                watch.cancel()
