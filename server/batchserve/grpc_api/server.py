"""The gRPC port (``--grpc-port``): ``inference.GRPCInferenceService`` (``service.py``) and the
standard health service (``grpc.health.v1``, from grpcio-health-checking) on one ``grpc.aio``
server, in the event loop the HTTP side runs in (``serving.py``), with its drain.

The port is first held by ``serving.reserve_port`` (bound with SO_REUSEPORT, never listening);
gRPC's listeners bind it with SO_REUSEPORT too (its default on Linux), so that with worker
processes every worker serves the port and the kernel spreads connections over them, as it does
the HTTP port's. Each process runs ``grpc_listeners`` servers on it (one listener each, the same
handlers): a grpc.aio server takes the next call only once the last one has been handed to its
handler, one at a time, so with one server the small calls of many connections reach the batcher
one by one and rarely share a batch; with several, calls arrive side by side and batch together
(benchmarks/README.md, "gRPC listeners"). A message, either way, is at most ``max_body_bytes``
(RESOURCE_EXHAUSTED past it, refused by gRPC before it is handed over).

The health service (``health.py``) mirrors ``/readyz``, for Kubernetes' gRPC probes (``Check``)
and the clients that follow it (``Watch``); the drain ends its watches.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc.aio
from fastapi import FastAPI
from grpc_health.v1 import health_pb2_grpc

from batchserve.fastpath import BatchserveApp
from batchserve.grpc_api.health import Health
from batchserve.grpc_api.service import InferenceService
from batchserve.pipeline import Pipeline
from batchserve.state import AppState

log = logging.getLogger(__name__)


class GrpcServed:
    """The gRPC server of one app on ``port`` (one ``reserve_port`` holds), for ``serving.Servers``:
    ``serve`` until ``stop``; ``in_flight`` the calls being served, for the drain."""

    lifespan = False
    uds: str | None = None

    def __init__(self, pipeline: Pipeline, port: int) -> None:
        self.state: AppState = pipeline.state
        self.port = port
        host = self.state.settings.host
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.where = f"grpc://{self.address}"
        self.service = InferenceService(pipeline)
        self.health = Health(self.state)
        self._servers: list[grpc.aio.Server] = []
        self._stopping: asyncio.Task[None] | None = None

    @property
    def in_flight(self) -> set[asyncio.Task[Any]]:
        return self.service.in_flight

    async def serve(self) -> None:
        limit = self.state.settings.max_body_bytes
        for _ in range(self.state.settings.grpc_listeners):  # all made before any await: stop stops all
            server = grpc.aio.server(options=[
                ("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 1)])
            server.add_generic_rpc_handlers((self.service.handler(),))
            health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
            server.add_insecure_port(self.address)
            self._servers.append(server)
        await asyncio.gather(*(server.start() for server in self._servers))
        await asyncio.gather(*(server.wait_for_termination() for server in self._servers))

    def stop(self) -> None:
        """Close the port to new calls at once, and the open streams to new requests; the calls
        in flight are the drain's to wait for (``Servers.serve``), and what is left when its grace
        is spent is cancelled."""
        if self._servers and self._stopping is None:
            grace_s = self.state.drain_left_s() + 1.0
            self._stopping = asyncio.get_running_loop().create_task(
                _stop_all(self._servers, grace_s), name="grpc-stop")
            self.service.drain()
            self.health.drain()


async def _stop_all(servers: list[grpc.aio.Server], grace_s: float) -> None:
    await asyncio.gather(*(server.stop(grace_s) for server in servers))


def grpc_server(app: FastAPI, port: int) -> GrpcServed:
    """The gRPC server of ``app`` (``create_app``'s), over its request pipeline, on ``port``."""
    assert isinstance(app, BatchserveApp) and app.fast_path is not None  # create_app sets it
    return GrpcServed(app.fast_path.pipeline, port)
