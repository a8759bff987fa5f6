"""The management API: load, reload and unload models of the configured repository, and tune
a running model's batcher, without a restart and without dropping admitted requests.

Off unless ``BATCHSERVE_MANAGEMENT_TOKEN`` is set; then every call needs ``Authorization:
Bearer <token>`` (compared in constant time). Models are named, never given as paths or URLs:
a load re-reads the repository file the server started with and takes that model's table, so
nothing from a request is ever unpickled or fetched. Paths follow Triton's model repository
extension (``/v2/repository/...``).

With worker processes (``--workers N``), a call reaching any worker applies to every worker
(``batchserve/cluster/fanout.py``); its answer says which it reached (``workers``).
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from batchserve import reload
from batchserve.cluster import fanout
from batchserve.config import ConfigError, load_models
from batchserve.errors import (
    LoadFailed,
    MalformedRequest,
    ManagementDisabled,
    Unauthorized,
    describe_validation_errors,
)
from batchserve.routing_api import add_routing_routes
from batchserve.state import AppState


class BatcherSettings(BaseModel):
    """What can change on a running model (PATCH /models/{name}/config)."""

    model_config = ConfigDict(extra="forbid")
    max_batch_size: int | None = Field(default=None, ge=1, le=65536)
    max_wait_ms: float | None = Field(default=None, ge=0, le=60_000)
    max_queue: int | None = Field(default=None, ge=1)
    timeout_ms: float | None = Field(default=None, gt=0)


def authorize(state: AppState, authorization: str) -> None:
    """Refuse a management call whose ``Authorization`` value (HTTP's header, gRPC's metadata) is
    not ``Bearer <token>``: 403 while the API is off, 401 when missing or wrong."""
    token = state.settings.management_token
    if token is None:
        raise ManagementDisabled("the management API is off; set BATCHSERVE_MANAGEMENT_TOKEN to use it")
    scheme, _, sent = authorization.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
            sent.encode(), token.get_secret_value().encode()):
        raise Unauthorized("missing or wrong bearer token")


async def repository_index(state: AppState) -> list[dict[str, Any]]:
    """The repository file's models and the served ones: name, version, state and reason (each
    served version of a model that has versions)."""
    names = [c.name for c in _repository(state)]
    index: list[dict[str, Any]] = []
    for name in dict.fromkeys([*names, *state.registry.names()]):
        versions = state.registry.versions(name)
        index.extend({"name": name, "version": m.config.version, **_state(m)} for m in versions)
        if not versions:
            served = name in state.registry
            index.append({"name": name, "version": "1",
                          **_state(state.registry.get(name) if served else None)})
    return index


async def load_model(state: AppState, name: str) -> dict[str, Any]:
    """Load or reload ``name`` from the repository file (every version its entry loads:
    ``reload.py``), on every worker: 404 if the file has no such model, 400 if the routing
    refuses the new set of versions, 409 if one failed to load (the previous ones serve on)."""
    configs = await asyncio.to_thread(reload.repository_configs, state, name)
    if state.cluster is not None:
        report = await fanout.load_all(state, state.cluster, name, configs)
        return {**describe(state, name), "workers": report}
    await reload.load(state, configs)
    return describe(state, name)


async def unload_model(state: AppState, name: str) -> dict[str, Any]:
    """Unload ``name``, every version of it (404 if not served), on every worker, its admitted
    requests answered."""
    registry = state.registry
    registry.get(name)  # 404 before any work
    if state.cluster is not None:
        report = await fanout.unload_all(state, state.cluster, name)
        return {**describe(state, name), "workers": report}
    await registry.unload(name, state.settings.shutdown_grace_s)
    return describe(state, name)


def describe(state: AppState, name: str) -> dict[str, Any]:
    """``name``'s state, as management's answers give it: the model's, and each version's."""
    answer = {"name": name, **_state(state.registry.get(name))}
    versions = state.registry.versions(name)
    if versions:
        answer["versions"] = {m.config.version: _state(m) for m in versions}
    return answer


def add_management_routes(router: APIRouter, state: AppState) -> None:
    registry = state.registry
    add_routing_routes(router, state,
                       lambda request: authorize(state, request.headers.get("authorization", "")))

    @router.post("/v2/repository/index", tags=["management"], summary="Models of the repository")
    async def index(request: Request) -> list[dict[str, Any]]:
        authorize(state, request.headers.get("authorization", ""))
        return await repository_index(state)

    @router.post("/v2/repository/models/{name}/load", tags=["management"],
                 summary="Load or reload a model from the repository file")
    async def load(name: str, request: Request) -> dict[str, Any]:
        authorize(state, request.headers.get("authorization", ""))
        return await load_model(state, name)

    @router.post("/v2/repository/models/{name}/unload", tags=["management"], summary="Unload a model")
    async def unload(name: str, request: Request) -> dict[str, Any]:
        authorize(state, request.headers.get("authorization", ""))
        return await unload_model(state, name)

    @router.patch("/models/{name}/config", tags=["management"],
                  summary="Change max_batch_size, max_wait_ms, max_queue, timeout_ms live (of "
                  "every version)")
    async def configure(name: str, request: Request) -> dict[str, Any]:
        authorize(state, request.headers.get("authorization", ""))
        registry.get(name)  # 404 before the body
        try:
            changes = BatcherSettings.model_validate_json(await request.body())
        except ValidationError as exc:
            raise MalformedRequest(describe_validation_errors(exc.errors())) from None
        if state.cluster is None:
            registry.configure(name, changes.model_dump(exclude_none=True))  # outlives reloads
            return configured(name)
        report = await fanout.configure_all(state, state.cluster, name,
                                            changes.model_dump(exclude_none=True))
        return {**configured(name), "workers": report}

    def configured(name: str) -> dict[str, Any]:
        """A PATCH's answer: the model's config, or each of its versions'."""
        models = registry.entries(name)
        if models[0].config.version is None:
            return {"name": name, "config": models[0].config.model_dump(mode="json")}
        return {"name": name, "versions": {m.config.version: m.config.model_dump(mode="json")
                                           for m in models}}


def _repository(state: AppState) -> list[Any]:
    try:
        return load_models(state.settings.config)
    except ConfigError as exc:
        raise LoadFailed(f"the repository file cannot be used: {exc}") from None


def _state(model: Any) -> dict[str, Any]:
    if model is None:
        return {"state": "UNAVAILABLE", "reason": "not loaded"}
    status = model.status()
    return {"state": "READY" if model.ready else status["state"].upper(), "reason": status["reason"]}


