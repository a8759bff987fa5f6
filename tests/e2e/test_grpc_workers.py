"""``batchserve serve --workers 2 --grpc-port P``: every worker serves the gRPC port with its
``grpc_listeners`` listeners (the kernel spreads connections over them, as it does the HTTP
port's), management through gRPC applies to every worker, and statistics are the whole server's
whichever worker answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil
import pytest
import tritonclient.grpc as triton

from tests.support import free_port, running_server, write_models

pytestmark = pytest.mark.slow

TOKEN = "correct-horse-battery-staple"
LISTENERS = 3
"""``BATCHSERVE_GRPC_LISTENERS``: gRPC listeners per worker."""
CONNECTIONS = 16
"""New connections in a row; all on one worker of two by chance: 2 ** -15."""


def _client(target: str) -> Any:
    """A client on a connection of its own (gRPC shares connections between channels of a process
    unless told not to)."""
    return triton.InferenceServerClient(target, channel_args=[("grpc.use_local_subchannel_pool", 1)])


def _listening(pid: int, port: int) -> list[int]:
    """How many sockets listen on ``port`` in each process of the server ``pid`` that has one."""
    counts = []
    for process in (psutil.Process(pid), *psutil.Process(pid).children(recursive=True)):
        found = sum(1 for c in process.net_connections(kind="tcp")
                    if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port)
        if found:
            counts.append(found)
    return sorted(counts)


def _echo(client: Any, value: float) -> Any:
    tensor = triton.InferInput("input", [1], "FP64")
    tensor.set_data_from_numpy(np.array([value], dtype=np.float64))
    return client.infer("echo", [tensor])


def test_every_worker_serves_the_port_and_management_applies_to_all(tmp_path: Path) -> None:
    started = tmp_path / "started"
    config = write_models(tmp_path / "models.toml", [
        {"name": "echo", "backend": "echo", "path": "x", "options": {"started": str(started)}}])
    port = free_port()
    target = f"127.0.0.1:{port}"
    with running_server(config, args=["--workers", "2", "--grpc-port", str(port)],
                        env={"BATCHSERVE_MANAGEMENT_TOKEN": TOKEN,
                             "BATCHSERVE_GRPC_LISTENERS": str(LISTENERS)}) as server:
        assert _listening(server.process.pid, port) == [LISTENERS, LISTENERS]  # in each worker
        for value in range(1, CONNECTIONS + 1):
            with _client(target) as client:
                assert _echo(client, value).as_numpy("output").tolist() == [str(2.0 * value).encode()]
        pids = {line.split()[0] for line in started.read_text().splitlines()}
        assert len(pids) == 2, pids  # both workers ran rows that came over gRPC
        with _client(target) as client:
            stats = client.get_inference_statistics("echo", as_json=True)["model_stats"][0]
            assert int(stats["inference_count"]) >= CONNECTIONS  # the whole server's
            client.unload_model("echo", headers={"authorization": f"Bearer {TOKEN}"})
        for _ in range(CONNECTIONS):  # whichever worker a connection reaches
            with _client(target) as client:
                assert not client.is_model_ready("echo")
        with _client(target) as client:
            client.load_model("echo", headers={"authorization": f"Bearer {TOKEN}"})
        for _ in range(CONNECTIONS):
            with _client(target) as client:
                assert client.is_model_ready("echo") and client.is_server_ready()
        with grpc.insecure_channel(target) as channel:  # the port is one server: live everywhere
            live: Any = channel.unary_unary("/inference.GRPCInferenceService/ServerLive")
            assert live(b"", timeout=30) == b"\x08\x01"
        server.stop()  # SIGTERM: every worker drains its gRPC port too, and exits 0
        assert server.process.returncode == 0
