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

import hmac
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from batchserve.cluster import fanout
from batchserve.config import ConfigError, load_models
from batchserve.errors import (
    InvalidInput,
    LoadFailed,
    MalformedRequest,
    ManagementDisabled,
    ModelNotFound,
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
    """The repository file's models and the served ones: name, version, state and reason."""
    served = {m.config.name: m for m in state.registry}
    names = [c.name for c in _repository(state)]
    return [{"name": name, "version": "1", **_state(served.get(name))}
            for name in dict.fromkeys([*names, *served])]


async def load_model(state: AppState, name: str) -> dict[str, Any]:
    """Load or reload ``name`` from the repository file, on every worker: 404 if the file has no
    such model, 409 if it failed to load (the previous version serves on)."""
    registry = state.registry
    _unversioned(state, name)
    config = next((c for c in _repository(state) if c.name == name), None)
    if config is None:
        raise ModelNotFound(f"no model {name!r:.80} in {state.settings.config}")
    if state.cluster is not None:
        report = await fanout.load_all(state, state.cluster, name)
        return {"name": name, **_state(registry.get(name)), "workers": report}
    model = await registry.load(config, state.settings.shutdown_grace_s)
    if model.state != "ready":
        raise LoadFailed(f"model '{name}' failed to load: {model.reason}; the previous version, "
                         "if any, still serves")
    return {"name": name, **_state(model)}


async def unload_model(state: AppState, name: str) -> dict[str, Any]:
    """Unload ``name`` (404 if not served), on every worker, its admitted requests answered."""
    registry = state.registry
    _unversioned(state, name)
    if state.cluster is not None:
        registry.get(name)  # 404 before any work
        report = await fanout.unload_all(state, state.cluster, name)
        return {"name": name, **_state(registry.get(name)), "workers": report}
    return {"name": name, **_state(await registry.unload(name, state.settings.shutdown_grace_s))}


def _unversioned(state: AppState, name: str) -> None:
    """Refuse (400) changing a model with versions other than by its routing."""
    if state.registry.versions(name):
        raise InvalidInput(f"model '{name}' has versions: loading, unloading and PATCHing it "
                           "while serving are not supported yet (restart the server to change "
                           "its versions); its traffic changes through /routing")


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
                  summary="Change max_batch_size, max_wait_ms, max_queue, timeout_ms live")
    async def configure(name: str, request: Request) -> dict[str, Any]:
        authorize(state, request.headers.get("authorization", ""))
        _unversioned(state, name)
        model = registry.get(name)
        try:
            changes = BatcherSettings.model_validate_json(await request.body())
        except ValidationError as exc:
            raise MalformedRequest(describe_validation_errors(exc.errors())) from None
        if state.cluster is not None:
            report = await fanout.configure_all(state, state.cluster, name,
                                                changes.model_dump(exclude_none=True))
            return {"name": name, "config": registry.get(name).config.model_dump(mode="json"),
                    "workers": report}
        model = registry.configure(name, changes.model_dump(exclude_none=True))  # outlives reloads
        return {"name": name, "config": model.config.model_dump(mode="json")}


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


