"""The peer API: what a worker serves on its Unix socket (``cluster.socket_path(i)``) so that a
management call reaching any worker applies to all (``fanout.py`` calls it).

The socket is in the run directory (mode 0700): only the server's own user can connect, so
the filesystem is its authentication and there is no token. It serves the management
operations and nothing else, each applied to this worker alone (never fanned out again):

    POST /peer/models/{name}/config    a PATCH's changes (the body: the settings)
    POST /peer/models/{name}/stage     load the repository entry's versions, warm them, don't install them
    POST /peer/models/{name}/commit    install what ``stage`` loaded, and its routing (``{"id": ...}``)
    POST /peer/models/{name}/abort     unload what ``stage`` loaded (``{"id": ...}``)
    POST /peer/models/{name}/unload
    POST /peer/models/{name}/routing   swap in a routing the coordinator validated
    POST /peer/models/{name}/shadow    the worst shadow items this worker kept
    GET  /peer/status                  this worker's index and models (a version by its key)

Its lifespan applies ``desired.json`` once more as soon as the socket listens: a change
recorded after this worker read the file at its start (``desired.apply_desired``, before the
models were built) but fanned out before its socket listened is read then; one recorded after
that read is fanned out to a listening socket. (Read before the socket listened, a change
recorded between the read and the listen would reach neither way.)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from batchserve.cluster import desired
from batchserve.cluster.fanout import LocalWorker
from batchserve.errors import BatchserveError, MalformedRequest, describe_validation_errors
from batchserve.management import BatcherSettings
from batchserve.responses import error_response
from batchserve.routing_api import RoutingBody
from batchserve.serving import Served, make_server
from batchserve.state import AppState

log = logging.getLogger(__name__)
_Body = TypeVar("_Body", bound=BaseModel)
LISTEN_POLL_S = 0.01


class StageId(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=64)


def create_peer_app(state: AppState) -> FastAPI:
    """The peer API over ``state`` (a worker's, ``state.cluster`` set)."""
    worker = LocalWorker(state)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Not awaited here: an unload waits for the model's startup load, and the socket
        # should listen meanwhile.
        reapplying = asyncio.create_task(reapply_desired(state), name="reapply-desired")
        try:
            yield
        finally:
            reapplying.cancel()

    app = FastAPI(title="batchserve peer", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)

    @app.post("/peer/models/{name}/config")
    async def configure(name: str, request: Request) -> dict[str, Any]:
        changes = _parse(BatcherSettings, await request.body()).model_dump(exclude_none=True)
        return await worker.configure(name, changes)

    @app.post("/peer/models/{name}/stage")
    async def stage(name: str, request: Request) -> dict[str, Any]:
        return await worker.stage(name, _parse(StageId, await request.body()).id)

    @app.post("/peer/models/{name}/commit")
    async def commit(name: str, request: Request) -> dict[str, Any]:
        return await worker.commit(name, _parse(StageId, await request.body()).id)

    @app.post("/peer/models/{name}/abort")
    async def abort(name: str, request: Request) -> dict[str, Any]:
        return await worker.abort(name, _parse(StageId, await request.body()).id)

    @app.post("/peer/models/{name}/routing")
    async def route(name: str, request: Request) -> dict[str, Any]:
        return await worker.route(name, _parse(RoutingBody, await request.body()).as_routing())

    @app.post("/peer/models/{name}/shadow")
    async def shadow_worst(name: str) -> dict[str, Any]:
        return await worker.shadow_worst(name)

    @app.post("/peer/models/{name}/unload")
    async def unload(name: str) -> dict[str, Any]:
        return await worker.unload(name)

    @app.get("/peer/status")
    async def status() -> dict[str, Any]:
        index = state.cluster.index if state.cluster is not None else None
        return {"index": index, "models": {m.config.key: {**m.status(), "config": m.config.model_dump(
            mode="json")} for m in state.registry}}

    async def on_error(request: Request, exc: BatchserveError) -> JSONResponse:
        return error_response(exc.status, exc.type, exc.message, exc.headers)

    app.add_exception_handler(BatchserveError, on_error)  # type: ignore[arg-type]
    return app


def make_peer_server(state: AppState) -> Served:
    """A server of the peer API on this worker's socket, to run beside the main port's
    (``serving.run_servers``: the same loop and drain)."""
    assert state.cluster is not None, "the peer API belongs to a worker of a cluster"
    path = state.cluster.socket_path(state.cluster.index)
    path.unlink(missing_ok=True)  # a worker that died left its socket: this one takes its index
    return make_server(create_peer_app(state), 0, state, lifespan="on", uds=str(path))


async def reapply_desired(state: AppState) -> None:
    """Apply what ``desired.json`` says to the models this worker built: PATCHed settings, and
    unloads (idempotent: what is applied already is applied again)."""
    if state.cluster is None:
        return
    socket = state.cluster.socket_path(state.cluster.index)
    while not socket.exists():  # made by bind(2), which asyncio follows with listen(2) at once
        await asyncio.sleep(LISTEN_POLL_S)
    records = await asyncio.to_thread(desired.read_desired, state.cluster)
    served = {model.config.key: model for model in state.registry}
    for name, record in records.items():
        if name not in served:
            continue
        if record["overrides"]:
            state.registry.configure(name, record["overrides"])
        if not record["served"] and served[name].state != "unloaded":
            await state.registry.unload(name, state.settings.shutdown_grace_s)


def restore_routing(state: AppState) -> None:
    """Set the routing management set on each model, as ``desired.json`` has it, before this
    (re)starting worker serves: it routes as the others do. Read once, at the start."""
    assert state.cluster is not None
    for name, record in desired.read_routing(state.cluster).items():
        current = record["current"]
        try:
            state.router.apply(name, state.router.check(name, current["weights"], current["shadows"]))
        except BatchserveError as exc:  # the repository file changed since: its own routing stands
            log.warning("the recorded routing of model %s no longer applies: %s", name, exc.message)


def _parse(schema: type[_Body], body: bytes) -> _Body:
    try:
        return schema.model_validate_json(body or b"{}")
    except ValidationError as exc:
        raise MalformedRequest(describe_validation_errors(exc.errors())) from None
